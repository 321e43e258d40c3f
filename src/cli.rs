//! The command line (README, "Quick tour"): `serve`, `fetch`, `invalidate`, `check`, `plugins`.
//! Exit codes: 0 ok, 1 failure, 2 usage or configuration error.

mod fetch_many;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::cache::Selector;
use crate::config::{Config, Flags};
use crate::daemon::Daemon;
use crate::model::PluginName;
use crate::pipeline::DataRequest;
use crate::plugin::{PluginFile, Settings, check_source, is_meta_file, list_plugin_files, sha256_hex};

#[derive(Parser, Debug)]
#[command(
    name = "tickerd",
    version,
    about = "Hosts Lua market-data fetcher plugins behind one shared Redis cache"
)]
pub(crate) struct Cli {
    /// TOML config file (also TICKERD_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Plugins directory (also TICKERD_PLUGINS_DIR; default ./plugins).
    #[arg(long = "plugins", global = true, value_name = "DIR")]
    plugins_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Serve {
        /// HTTP address (also TICKERD_LISTEN; default 127.0.0.1:8000).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Watch the plugins directory by polling (NFS, some container mounts).
        #[arg(long)]
        poll: bool,
    },
    /// One request through the same pipeline and cache; prints the body.
    Fetch(fetch_many::Args),
    /// Delete cache entries; prints how many.
    Invalidate {
        #[arg(long)]
        plugin: Option<String>,
        #[arg(long)]
        ticker: Option<String>,
        #[arg(long, value_name = "YYYY-MM-DD", requires = "end")]
        start: Option<String>,
        #[arg(long, value_name = "YYYY-MM-DD", requires = "start")]
        end: Option<String>,
    },
    /// Compile and validate plugin files (default ./plugins).
    Check { paths: Vec<PathBuf> },
    /// List plugins with ttl, version, status.
    Plugins,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutFormat {
    Json,
    Csv,
}

fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("tickerd: {msg}");
    ExitCode::from(2)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut flags = Flags {
        config: cli.config.clone(),
        plugins_dir: cli.plugins_dir.clone(),
        ..Flags::default()
    };
    if let Command::Serve { listen, poll } = &cli.command {
        flags.listen = listen.clone();
        flags.poll = *poll;
    }
    let config = match Config::load(&flags) {
        Ok(c) => c,
        Err(e) => return usage_error(format!("configuration error: {e}")),
    };
    let quiet = !matches!(cli.command, Command::Serve { .. });
    let filter = if quiet && std::env::var("TICKERD_LOG").is_err() {
        "warn".to_owned()
    } else {
        config.log.clone()
    };
    let _log_guard = match crate::logging::init(&filter, config.log_format) {
        Ok(g) => g,
        Err(e) => return usage_error(e),
    };
    match cli.command {
        Command::Serve { .. } => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tickerd: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let daemon = Daemon::new(config, flags);
            ExitCode::from(rt.block_on(crate::server::serve(daemon)))
        }
        Command::Fetch(args) => {
            if args.tickers.len() == 1 && args.tickers_file.is_none() && args.out.is_none() {
                // One ticker: its body, as the README's CLI table has it.
                fetch(config, flags, args)
            } else {
                fetch_many::run(config, flags, args)
            }
        }
        Command::Invalidate {
            plugin,
            ticker,
            start,
            end,
        } => invalidate(config, flags, plugin, ticker, start, end),
        Command::Check { paths } => {
            let paths = if paths.is_empty() {
                vec![config.plugins_dir.clone()]
            } else {
                paths
            };
            check(&paths)
        }
        Command::Plugins => plugins(&config),
    }
}

fn fetch(config: Config, flags: Flags, args: fetch_many::Args) -> ExitCode {
    let today = chrono::Utc::now().date_naive();
    let req = PluginName::parse(&args.plugin).and_then(|plugin| {
        DataRequest::from_parts(
            plugin,
            &args.tickers[0],
            args.start.as_deref(),
            args.end.as_deref(),
            args.refresh,
            today,
        )
    });
    let req = match req {
        Ok(r) => r,
        Err(e) => return usage_error(e),
    };
    let format = args.format;
    let Ok(rt) = runtime() else { return ExitCode::from(1) };
    rt.block_on(async move {
        let daemon = Daemon::new(config, flags);
        daemon.start().await;
        match daemon.get(&req).await {
            Ok(answer) => {
                match format {
                    OutFormat::Json => println!("{}", String::from_utf8_lossy(&answer.to_json())),
                    OutFormat::Csv => print!("{}", answer.to_csv().unwrap_or_default()),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                // The status an HTTP client would get for the same failure.
                let status = crate::http::ApiError::from(e.clone()).status().as_u16();
                eprintln!("tickerd: {} ({status}): {e}", e.code());
                ExitCode::from(1)
            }
        }
    })
}

fn invalidate(
    config: Config,
    flags: Flags,
    plugin: Option<String>,
    ticker: Option<String>,
    start: Option<String>,
    end: Option<String>,
) -> ExitCode {
    let today = chrono::Utc::now().date_naive();
    let sel = match Selector::from_parts(
        plugin.as_deref(),
        ticker.as_deref(),
        start.as_deref(),
        end.as_deref(),
        today,
    ) {
        Ok(s) => s,
        Err(e) if e.field == "plugin" && plugin.is_none() && ticker.is_none() => {
            return usage_error("invalidate needs --plugin, --ticker or both");
        }
        Err(e) => return usage_error(e),
    };
    let Ok(rt) = runtime() else { return ExitCode::from(1) };
    rt.block_on(async move {
        let daemon = Daemon::new(config, flags);
        if let Err(e) = daemon.cache().redis().connect().await {
            eprintln!(
                "tickerd: cannot reach redis at {}: {e}",
                daemon.cache().redis().display_url()
            );
            return ExitCode::from(1);
        }
        // Loaded plugins name their current cache_version, so their series
        // are found even where an index set is missing.
        daemon.registry().rescan().await;
        let done = daemon.invalidate(&sel).await;
        println!("{}", done.deleted);
        for p in &done.problems {
            eprintln!("tickerd: not removed: {p}");
        }
        if done.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    })
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let mut files = Vec::new();
    let mut problems = 0;
    for p in paths {
        if !p.is_dir() {
            files.push(p.clone());
            continue;
        }
        match list_plugin_files(p) {
            Ok(listed) => {
                for (path, why) in listed.bad_names {
                    println!("{}:1: {why}", path.display());
                    problems += 1;
                }
                files.extend(listed.files.into_iter().map(|f| f.path));
            }
            Err(e) => {
                println!("{}:1: cannot read the directory: {e}", p.display());
                problems += 1;
            }
        }
    }
    if files.is_empty() && problems == 0 {
        eprintln!(
            "tickerd: no plugin files found in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::from(1);
    }
    let mut checked = 0;
    for file in files {
        let display = file.display().to_string();
        let source = match std::fs::read_to_string(&file) {
            Ok(s) => s,
            Err(e) => {
                println!("{display}:1: cannot read: {e}");
                problems += 1;
                continue;
            }
        };
        if is_meta_file(&source) {
            continue;
        }
        checked += 1;
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if let Err(e) = PluginName::parse(stem) {
            println!("{display}:1: {}", e.message);
            problems += 1;
            continue;
        }
        match check_source(stem, &display, &source) {
            Ok(_) => eprintln!("{display}: ok"),
            Err(p) => {
                println!("{p}");
                problems += 1;
            }
        }
    }
    if problems > 0 {
        eprintln!("{problems} problem(s) in {checked} plugin file(s)");
        ExitCode::from(1)
    } else {
        eprintln!("{checked} plugin file(s) ok");
        ExitCode::SUCCESS
    }
}

fn plugins(config: &Config) -> ExitCode {
    let files = match list_plugin_files(&config.plugins_dir) {
        Ok(listed) => listed.files,
        Err(e) => {
            eprintln!("tickerd: cannot read {}: {e}", config.plugins_dir.display());
            return ExitCode::from(1);
        }
    };
    println!(
        "{:<16} {:>8} {:<12} {:<6} DESCRIPTION",
        "NAME", "TTL", "VERSION", "STATUS"
    );
    let mut failed = false;
    for PluginFile {
        name,
        path: file,
        source,
    } in files
    {
        let Ok(source) = source else {
            continue;
        };
        let name = name.as_str();
        let version = sha256_hex(source.as_bytes());
        match check_source(name, &file.display().to_string(), &source) {
            Ok(m) => {
                let s = Settings::effective(&m, &config.plugin_overrides(name), config.cache.default_ttl);
                println!(
                    "{:<16} {:>8} {:<12} {:<6} {}",
                    name,
                    humantime::format_duration(s.ttl).to_string(),
                    &version[..12],
                    "ok",
                    m.description
                );
            }
            Err(p) => {
                failed = true;
                println!("{:<16} {:>8} {:<12} {:<6} {}", name, "-", &version[..12], "error", p);
            }
        }
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
