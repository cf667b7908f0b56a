//! The route table. Each route is declared once, in its area's file, as its OpenAPI
//! description ([`RouteDoc`]: method, path template, summary, body, errors) together
//! with its handler; the path filter is made from the template here. The router, the
//! OpenAPI document, the `Allow` header of 405 answers and the auth-matrix test all
//! read these declarations: there is no second list.

use crate::http::openapi::RouteDoc;
use warp::filters::BoxedFilter;
use warp::http::Method;
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// Declared routes: their descriptions and their filters, in declaration order.
#[derive(Default)]
pub(crate) struct Table {
    pub docs: Vec<RouteDoc>,
    pub filters: Vec<BoxedFilter<(Response,)>>,
}

impl Table {
    /// Adds one declared route.
    pub fn add(&mut self, doc: RouteDoc, filter: BoxedFilter<(Response,)>) {
        self.docs.push(doc);
        self.filters.push(filter);
    }

    /// Adds every route of `other`.
    pub fn extend(&mut self, other: Table) {
        self.docs.extend(other.docs);
        self.filters.extend(other.filters);
    }
}

/// The `{name}` segments of `path` matched against a request path, in order; `None`
/// when the request path has another shape. Segments are given as they arrive
/// (percent-encoded), as warp's own path parameters are.
pub fn matches(template: &str, path: &str) -> Option<Vec<String>> {
    // Every request is tried against every route: no allocation until one matches.
    let mut t = template.trim_end_matches('/').split('/');
    let mut p = path.trim_end_matches('/').split('/');
    let mut params = Vec::new();
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some(t), Some(p)) if t.starts_with('{') && !p.is_empty() => params.push(p.to_string()),
            (Some(t), Some(p)) if t == p => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn templates_match_whole_paths_only() {
        let t = "/api/instances/{id}/webhooks/{delivery}/redeliver";
        assert_eq!(
            matches(t, "/api/instances/a1/webhooks/d9/redeliver"),
            Some(vec!["a1".to_string(), "d9".to_string()])
        );
        assert_eq!(matches(t, "/api/instances/a1/webhooks/d9"), None);
        assert_eq!(matches(t, "/api/instances//webhooks/d9/redeliver"), None);
        assert_eq!(
            matches("/api/status/{id}", "/api/status/x/"),
            Some(vec!["x".into()])
        );
        assert_eq!(matches("/api/status/{id}", "/api/status/x/y"), None);
        assert_eq!(matches("/", "/"), Some(vec![]));
        assert_eq!(matches("/docs", "/"), None);
    }
}

/// Method and path of `doc`, extracting its path parameters.
fn at(doc: &RouteDoc) -> BoxedFilter<(Vec<String>,)> {
    let (template, method) = (doc.path, doc.method.to_ascii_uppercase());
    warp::method()
        .and(warp::path::full())
        .and_then(move |m: Method, full: FullPath| {
            let found = (m.as_str() == method)
                .then(|| matches(template, full.as_str()))
                .flatten();
            async move { found.ok_or_else(warp::reject::not_found) }
        })
        .boxed()
}

/// The filter of a route without path parameters.
pub fn at0(doc: &RouteDoc) -> BoxedFilter<()> {
    at(doc).map(|_: Vec<String>| ()).untuple_one().boxed()
}

/// The filter of a route with one path parameter.
pub fn at1(doc: &RouteDoc) -> BoxedFilter<(String,)> {
    at(doc)
        .and_then(|v: Vec<String>| async move { take::<1>(v).map(|[a]| a) })
        .boxed()
}

/// The filter of a route with two path parameters.
pub fn at2(doc: &RouteDoc) -> BoxedFilter<(String, String)> {
    at(doc)
        .and_then(|v: Vec<String>| async move { take::<2>(v).map(|[a, b]| (a, b)) })
        .untuple_one()
        .boxed()
}

/// Exactly `N` parameters (a template with another count is not this filter's).
fn take<const N: usize>(v: Vec<String>) -> Result<[String; N], Rejection> {
    v.try_into().map_err(|_| warp::reject::not_found())
}
