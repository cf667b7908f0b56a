//! The `sudevwa` binary: `sudevwa [serve]`, `sudevwa migrate`, `--config PATH`.
//!
//! Any start-up failure prints one line (`sudevwa: ...`) on stderr and exits non-zero:
//! 2 for configuration errors, 1 for everything else.
// Release builds nest the server's warp filter chain deeper than the default limit of 128.
#![recursion_limit = "256"]

/// Small blocks to mimalloc, large ones to the system allocator (see `sudevwa::alloc`).
#[global_allocator]
static GLOBAL: sudevwa::alloc::SplitAlloc = sudevwa::alloc::SplitAlloc;

use std::path::PathBuf;
use std::process::ExitCode;
use sudevwa::config::{Config, Sources};

const USAGE: &str = "usage: sudevwa [serve|migrate] [--config PATH] [--sandbox [--mock-url URL]]

  serve       run the server (default)
  migrate     apply database migrations and exit
  --config    config file (default ./config.toml if present; env SUDEVWA_CONFIG)
  --sandbox   run against a mock WhatsApp network, with /sandbox/... routes
              (builds with `--features sandbox` only)
  --mock-url  with --sandbox: a mock network already running at URL (http://IP:PORT)
              instead of one started in-process (config sandbox.mock_url)";

enum Command {
    Serve,
    Migrate,
}

/// What the command line asks for.
struct Args {
    cmd: Command,
    config: Option<PathBuf>,
    sandbox: bool,
    mock_url: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut cmd = None;
    let mut config = None;
    let mut sandbox = false;
    let mut mock_url = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "serve" if cmd.is_none() => cmd = Some(Command::Serve),
            "migrate" if cmd.is_none() => cmd = Some(Command::Migrate),
            "--config" | "-c" => {
                config = Some(PathBuf::from(args.next().ok_or("--config needs a path")?));
            }
            s if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]))
            }
            "--sandbox" => sandbox = true,
            "--mock-url" => mock_url = Some(args.next().ok_or("--mock-url needs a URL")?),
            s if s.starts_with("--mock-url=") => mock_url = Some(s["--mock-url=".len()..].into()),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        cmd: cmd.unwrap_or(Command::Serve),
        config,
        sandbox,
        mock_url,
    })
}

fn main() -> ExitCode {
    let Args {
        cmd,
        config: config_path,
        sandbox,
        mock_url,
    } = match parse_args() {
        Ok(v) => v,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sudevwa: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if sandbox && !cfg!(feature = "sandbox") {
        eprintln!("sudevwa: this build has no sandbox; build it with `cargo run --features sandbox -- --sandbox`");
        return ExitCode::from(2);
    }
    let mut config = match Config::load(&Sources::from_process(config_path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sudevwa: config error: {e}");
            return ExitCode::from(2);
        }
    };
    if mock_url.is_some() {
        config.sandbox.mock_url = mock_url;
    }
    // A mock network is never used outside a sandbox run: refuse rather than ignore.
    if config.sandbox.mock_url.is_some() && !sandbox {
        eprintln!("sudevwa: a mock network URL (--mock-url, sandbox.mock_url) needs --sandbox and a sandbox build");
        return ExitCode::from(2);
    }
    // A sandbox build carries the mock's certificate-check skip: it must never talk to
    // real WhatsApp, so it serves only in sandbox mode.
    if cfg!(feature = "sandbox") && !sandbox && matches!(cmd, Command::Serve) {
        eprintln!("sudevwa: this is a sandbox build (it skips WhatsApp's certificate check) and serves only with --sandbox; build without `--features sandbox` for production");
        return ExitCode::from(2);
    }
    init_tracing(&config.log.filter);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sudevwa: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cmd {
            Command::Serve if sandbox => serve_sandbox(config).await,
            Command::Serve => sudevwa::server::run(config, sudevwa::server::shutdown_signal())
                .await
                .map_err(|e| e.to_string()),
            Command::Migrate => async {
                let db = sudevwa::store::db::open(&config.database).await?;
                db.close()
                    .await
                    .map_err(sudevwa::store::db::DbError::Connect)?;
                println!("migrations applied");
                Ok::<(), sudevwa::store::db::DbError>(())
            }
            .await
            .map_err(|e| e.to_string()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sudevwa: {}", e.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// `--sandbox`: the server against a mock WhatsApp network, in-process or at
/// `sandbox.mock_url`.
#[cfg(feature = "sandbox")]
async fn serve_sandbox(config: Config) -> Result<(), String> {
    use sudevwa::server::{run_with, Overrides};
    let sb = match &config.sandbox.mock_url {
        Some(url) => sudevwa::sandbox::Sandbox::connect(url).await?,
        None => sudevwa::sandbox::Sandbox::start()
            .await
            .map_err(|e| format!("cannot start the mock network: {e}"))?,
    };
    println!("sandbox: mock WhatsApp network at {}", sb.mock_url());
    let wa = sb.wa_options(&config.whatsapp.device_name);
    let routes_sb = sb.clone();
    run_with(
        config,
        Overrides {
            wa: Some(wa),
            sandbox: Some(Box::new(move |api| {
                sudevwa::sandbox::routes(api, routes_sb)
            })),
            timing: None,
        },
        |local| println!("listening on http://{local}"),
        sudevwa::server::shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}

#[cfg(not(feature = "sandbox"))]
async fn serve_sandbox(_config: Config) -> Result<(), String> {
    Err("this build has no sandbox".into())
}

fn init_tracing(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr; stdout carries only the machine-readable start line.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
