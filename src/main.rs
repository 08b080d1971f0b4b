//! Wiring: arguments → config → outbox and sender → HTTP server → signals → drain → exit.
//! The only place that calls `process::exit` or picks an exit code: 0 clean, 1 runtime
//! failure (cannot bind, spool unusable), 2 invalid command line or configuration.

mod alertmanager;
mod auth;
mod bignum;
mod build;
mod cli;
mod commands;
mod compact;
mod config;
mod config_file;
mod digest;
mod fleet;
mod guard;
mod intake;
mod key_param;
mod log_throttle;
mod logger;
mod memcpy;
mod metrics;
mod outbox;
mod proctitle;
mod reject_log;
mod render;
mod robots;
mod routing;
mod server;
mod sort;
mod stack_trim;
mod template;
#[cfg(test)]
mod test_rng;
mod time;
mod tls;
mod values;
mod wecom;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use may_minihttp::HttpServiceFactory;

use crate::cli::RawArgs;
use crate::config::Config;

// musl's malloc serialises every allocation behind one lock, which cost the static binary
// half of its intake speed and more; BENCHMARKS.md has the measurements behind the pick.
// Features `alloc-mimalloc` (default) and `alloc-jemalloc` choose; glibc builds keep glibc's
// malloc. mimalloc is built with transparent huge pages off (.cargo/config.toml).
#[cfg(all(target_env = "musl", feature = "alloc-mimalloc"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(target_env = "musl", feature = "alloc-jemalloc", not(feature = "alloc-mimalloc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Coroutine stack in machine words (128 KiB on 64-bit). JSON depth is capped at
/// `intake::MAX_JSON_DEPTH` (16) before serde_json recurses; measured in a debug build (the
/// larger frames), this stack overflows only past about 60 levels. An overflow ends the
/// connection's coroutine without unwinding, so `tests/it/hardening.rs` sends the deepest
/// accepted input. Only touched pages count towards RSS.
const COROUTINE_STACK_WORDS: usize = 0x4000;

/// may pre-allocates 1,000 coroutine stacks by default (10.6 MB idle, 10 ms start-up);
/// 10 measured 2.7 MB and 2 ms at the same throughput.
const COROUTINE_POOL: usize = 10;

enum Failure {
    Usage(String),
    Runtime(String),
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("weixin-robot: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("weixin-robot: {msg}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<(), Failure> {
    // Block the signals we handle before any thread starts, so every thread inherits the mask
    // and only `Signals::wait` ever sees them.
    let signals = Signals::block(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);

    let raw =
        cli::parse_args(std::env::args_os().skip(1).collect(), &|name| std::env::var(name).ok())
            .map_err(|e| Failure::Usage(e.to_string()))?;
    // `--key` on the command line is readable by every local user through ps: hide it now that
    // the arguments have been copied.
    if let Some(key) = raw.get("--key").filter(|_| raw.on_command_line("--key")) {
        proctitle::hide(key);
    }
    if raw.help
        || raw.version
        || matches!(raw.command, cli::Command::Render(_) | cli::Command::RenderDigest(_))
    {
        // Commands that only print: `weixin-robot render … | head` should end quietly when
        // the reader goes, as other tools do, not panic in println! with "Broken pipe" (Rust
        // ignores SIGPIPE). Never for the server, whose sockets must not kill it.
        // SAFETY: resets one signal's disposition before any thread starts; no handler runs.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if raw.help {
        print!("{}", cli::help_text(raw.command.name()));
        return Ok(());
    }
    if raw.version {
        println!("{}", build::version_line());
        return Ok(());
    }
    let config = Config::from_raw(&raw).map_err(|e| Failure::Usage(e.to_string()))?;
    logger::init(config.log_format);
    match &raw.command {
        cli::Command::Serve => serve(&config, raw, &signals),
        cli::Command::Render(path) => {
            commands::render(&config, path.as_deref()).map_err(Failure::Runtime)
        }
        cli::Command::RenderDigest(paths) => {
            commands::render_digest(&config, paths).map_err(Failure::Runtime)
        }
        cli::Command::SendTest => {
            commands::send_test(&config, raw.with_file).map_err(Failure::Runtime)
        }
        cli::Command::Healthcheck => commands::healthcheck(&config).map_err(Failure::Runtime),
    }
}

fn serve(config: &Config, raw: RawArgs, signals: &Signals) -> Result<(), Failure> {
    if config.dry_run {
        log::warn!("dry run: messages are printed to stdout, nothing is sent to WeCom");
        println!("dry run: messages are printed here, nothing is sent to WeCom");
    }
    // A bad --ca-file is a configuration error (exit 2), found before anything starts.
    let client = wecom::Client::new(config.send_timeout, config.ca_file.as_deref())
        .map_err(Failure::Usage)?;
    outbox::dedup::set_max_entries(config.dedup_max_entries);
    let fleet = fleet::Fleet::start(config, raw, client).map_err(Failure::Runtime)?;
    metrics::config_loaded(true);

    let auth =
        auth::Auth::load(config.auth_token_file.as_deref(), config.basic_auth_file.as_deref())
            .map_err(Failure::Usage)?;
    raise_fd_limit();
    let guard = Arc::new(guard::Guard::new(guard::Limits {
        max_connections: config.max_connections,
        request_timeout: config.request_timeout,
        max_header_bytes: config.max_header_bytes,
        max_headers: config.max_headers,
        max_unsent_bytes: config.max_unsent_bytes,
    }));
    guard::Guard::spawn_reaper(Arc::clone(&guard))
        .map_err(|e| Failure::Runtime(format!("starting reaper thread: {e}")))?;

    may::config().set_pool_capacity(COROUTINE_POOL).set_stack_size(COROUTINE_STACK_WORDS);
    let app = Arc::new(server::App {
        fleet,
        allow_key_param: config.allow_key_param,
        key_param_host: key_param::KeyParamHost::parse(&config.key_param_host)
            .map_err(|e| Failure::Usage(format!("invalid --key-param-host: {e}")))?,
        max_body_bytes: config.max_body_bytes,
        max_alerts: config.max_alerts,
        auth,
        guard,
        body_budget: guard::BodyBudget::new(config.max_body_in_flight),
        accepting: AtomicBool::new(true),
    });
    let (listener, bound) = listen(config.listen)?;
    let _server = server::Factory { app: Arc::clone(&app) }
        .start_on(listener)
        .map_err(|e| Failure::Runtime(format!("listening on {}: {e}", config.listen)))?;
    log::info!(
        "listening addr={} robots={} default_robot={} route_label={} tz={} state_dir={} version={}",
        bound,
        config.robots.len(),
        config.default_robot,
        config.route_label,
        config.tz,
        config.state_dir.as_ref().map_or_else(|| "-".into(), |p| p.display().to_string()),
        build::VERSION,
    );

    loop {
        // This thread only waits for signals from here: give back the stack start-up (or the
        // last reload) touched.
        stack_trim::release_unused_main_stack();
        match signals.wait() {
            libc::SIGHUP => match app.fleet.reload() {
                Ok(summary) => log::info!("configuration reloaded (SIGHUP) {summary}"),
                Err(e) => log::error!("reload failed, the old configuration stays: {e}"),
            },
            sig => {
                log::info!("signal received, draining signal={sig} grace={:?}", config.grace);
                break;
            }
        }
    }
    app.accepting.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + config.grace;
    let robots = app.fleet.all();
    for robot in &robots {
        robot.outbox.close_intake();
    }
    for robot in &robots {
        let outbox = &robot.outbox;
        let drained = outbox.drain(deadline);
        outbox.stop();
        let left = outbox.stats();
        if drained {
            log::info!("outbox drained robot={}", robot.name);
        } else if outbox.is_durable() {
            log::warn!(
                "grace period over, pending messages stay in the spool for the next start robot={} messages={} alerts={}",
                robot.name,
                left.messages,
                left.alerts
            );
        } else {
            log::error!(
                "grace period over, pending messages are lost (no --state-dir) robot={} messages={} alerts={}",
                robot.name,
                left.messages,
                left.alerts
            );
        }
    }
    // Deletes of what was delivered reach the disk before exit (else it is resent once).
    for robot in &robots {
        robot.outbox.close_spool();
    }
    for outbox in app.fleet.parked() {
        outbox.close_spool();
    }
    log::info!("exiting");
    Ok(())
}

/// Binds the listening socket without `SO_REUSEPORT` (which may's own `bind` sets, letting a
/// second relay on the same port start and take half the alerts), so a port in use is an
/// error. Returns the address actually bound (`--port 0` picks one).
fn listen(
    addr: std::net::SocketAddr,
) -> Result<(may::net::TcpListener, std::net::SocketAddr), Failure> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Failure::Runtime(format!("port {} is already in use ({e})", addr.port()))
        } else {
            Failure::Runtime(format!("listening on {addr}: {e}"))
        }
    })?;
    let bound = std_listener
        .local_addr()
        .map_err(|e| Failure::Runtime(format!("listening on {addr}: {e}")))?;
    let fd = std_listener.into_raw_fd();
    // SAFETY: `fd` is a listening TCP socket we own (just released by `into_raw_fd`); may's
    // listener takes ownership. A longer backlog, as may's own bind uses: bursts of
    // Alertmanager connections should queue, not be refused.
    let listener = unsafe {
        libc::listen(fd, 1024);
        may::net::TcpListener::from_raw_fd(fd)
    };
    Ok((listener, bound))
}

/// Lifts the soft open-files limit to the hard one: every connection is a descriptor, and
/// edge hosts often default to 1,024.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A blocked signal set, waited on synchronously: no handler runs at an arbitrary point.
struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    fn block(signals: &[libc::c_int]) -> Signals {
        // SAFETY: plain libc calls on a local sigset_t; pthread_sigmask affects this thread
        // (the main thread, before any other starts) and is inherited by threads it spawns.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Signals { set }
        }
    }

    fn wait(&self) -> libc::c_int {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` was initialised in `block`; sigwait only writes `sig`.
        unsafe {
            libc::sigwait(&self.set, &mut sig);
        }
        sig
    }
}
