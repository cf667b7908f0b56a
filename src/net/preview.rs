//! Link previews for outgoing texts: the first `http(s)` URL of the text is fetched
//! through the SSRF-safe fetcher ([`super::fetch`]) and its page's title and
//! description (Open Graph tags first, then `<title>` / `<meta name="description">`)
//! go into the message, as WhatsApp's own clients do. A page that cannot be fetched or
//! read gives no preview; the text is sent anyway.

use super::fetch::{fetch, FetchPolicy};
use actors::events::LinkPreview;

/// Longest page read for a preview.
pub const MAX_PAGE: u64 = 1024 * 1024;
/// Longest title and description kept.
const MAX_TITLE: usize = 200;
const MAX_DESCRIPTION: usize = 400;

/// The preview of the first URL in `text`, if it can be had under `policy`.
pub async fn link_preview(text: &str, policy: &FetchPolicy) -> Option<LinkPreview> {
    let url = first_url(text)?;
    let page = match fetch(&url, policy).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "link preview fetch failed");
            return None;
        }
    };
    let html = String::from_utf8_lossy(&page.bytes);
    let (title, description) = read_head(&html);
    title.as_ref()?;
    Some(LinkPreview {
        url,
        title,
        description,
    })
}

/// The first `http://` or `https://` URL in `text` (up to the next whitespace, without
/// trailing punctuation).
pub fn first_url(text: &str) -> Option<String> {
    let start = text
        .match_indices("http")
        .map(|(i, _)| i)
        .find(|&i| text[i..].starts_with("http://") || text[i..].starts_with("https://"))?;
    let rest = &text[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let url = rest[..end].trim_end_matches(['.', ',', ';', ':', '!', '?', ')', '"', '\'']);
    url::Url::parse(url).ok().map(|_| url.to_string())
}

/// The page's title and description.
pub fn read_head(html: &str) -> (Option<String>, Option<String>) {
    let mut og_title = None;
    let mut og_description = None;
    let mut description = None;
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while let Some(i) = lower[at..].find("<meta") {
        let start = at + i;
        let end = lower[start..].find('>').map_or(lower.len(), |e| start + e);
        let tag = &html[start..end];
        let key = attr(tag, "property").or_else(|| attr(tag, "name"));
        if let (Some(key), Some(content)) = (key, attr(tag, "content")) {
            match key.to_ascii_lowercase().as_str() {
                "og:title" => og_title = og_title.or(Some(content)),
                "og:description" => og_description = og_description.or(Some(content)),
                "description" => description = description.or(Some(content)),
                _ => {}
            }
        }
        at = end;
    }
    let title = og_title.or_else(|| {
        let s = lower.find("<title")?;
        let open = s + lower[s..].find('>')? + 1;
        let close = open + lower[open..].find("</title")?;
        Some(html[open..close].to_string())
    });
    let clean = |s: String, max: usize| {
        let s = decode_entities(s.split_whitespace().collect::<Vec<_>>().join(" ").as_str());
        Some(s.chars().take(max).collect::<String>()).filter(|s| !s.is_empty())
    };
    (
        title.and_then(|t| clean(t, MAX_TITLE)),
        og_description
            .or(description)
            .and_then(|d| clean(d, MAX_DESCRIPTION)),
    )
}

/// The value of attribute `name` in a tag's text (quoted with `"` or `'`, or bare).
fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        // A whole attribute name: preceded by whitespace, followed by `=`.
        let before = lower[..at].chars().next_back();
        if !before.is_some_and(char::is_whitespace) {
            continue;
        }
        let rest = tag[from..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or_default(),
            _ => rest
                .split(|c: char| c.is_whitespace() || c == '/' || c == '>')
                .next()
                .unwrap_or_default(),
        };
        return Some(value.to_string());
    }
    None
}

/// The common HTML entities.
fn decode_entities(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::{first_url, read_head};

    #[test]
    fn the_first_url_without_trailing_punctuation() {
        assert_eq!(
            first_url("see https://example.org/a?b=1, then http://x.y").as_deref(),
            Some("https://example.org/a?b=1")
        );
        assert_eq!(
            first_url("(https://e.org/x).").as_deref(),
            Some("https://e.org/x")
        );
        assert_eq!(first_url("no link, just httpx and ftp://a.b"), None);
    }

    #[test]
    fn open_graph_first_then_title_and_description() {
        let html = r#"<html><head><title>Plain &amp; simple</title>
            <meta name="description" content="The plain one">
            <META property='og:title' content='Open &quot;Graph&quot;'/>
            <meta content="OG description" property="og:description">
            </head><body>x</body></html>"#;
        assert_eq!(
            read_head(html),
            (
                Some("Open \"Graph\"".to_string()),
                Some("OG description".to_string())
            )
        );
        let plain = "<title>\n  Just   a title </title><meta name=description content=Bare>";
        assert_eq!(
            read_head(plain),
            (Some("Just a title".to_string()), Some("Bare".to_string()))
        );
        assert_eq!(read_head("<p>nothing</p>"), (None, None));
    }
}
