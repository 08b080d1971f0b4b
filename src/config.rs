//! Command line and environment → a checked [`Config`].
//!
//! Every flag is defined once in [`FLAGS`] (name, env var, default, help); `--help` and the
//! README table are generated from that table so they cannot drift from the parser.
//! Parsing happens in two steps, like ripgrep's low/high args: [`RawArgs`] holds the strings the
//! user gave, [`Config::from_raw`] checks them and derives what the program runs on.
//!
//! The webhook key is a secret: it lives only inside [`WebhookUrl`], whose `Debug` and `Display`
//! print `key=***`, and no error message here ever includes the value the user passed for it.
//!
//! This module knows nothing of HTTP serving, JSON payloads or threads.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::config_file;
use std::time::Duration;

/// WeCom's robot endpoint; a bare key is appended to it.
/// <https://developer.work.weixin.qq.com/document/path/91770>
pub const WECOM_SEND_URL: &str = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send";

/// One command-line flag: the single source for the parser, `--help` and the README table.
pub struct Flag {
    pub long: &'static str,
    pub short: Option<&'static str>,
    pub env: Option<&'static str>,
    /// Value placeholder in help; `None` for switches.
    pub value: Option<&'static str>,
    pub default: Option<&'static str>,
    pub help: &'static str,
}

const fn flag(
    long: &'static str,
    short: Option<&'static str>,
    env: Option<&'static str>,
    value: Option<&'static str>,
    default: Option<&'static str>,
    help: &'static str,
) -> Flag {
    Flag { long, short, env, value, default, help }
}

pub const FLAGS: &[Flag] = &[
    flag("--port", Some("-p"), Some("PORT"), Some("PORT"), Some("6000"), "TCP port to listen on"),
    flag(
        "--key",
        Some("-k"),
        Some("KEY"),
        Some("URL|KEY"),
        None,
        "WeCom robot webhook URL or bare key (prefer --key-file: flags show up in ps)",
    ),
    flag(
        "--key-file",
        None,
        Some("WEIXIN_ROBOT_KEY_FILE"),
        Some("PATH"),
        None,
        "read the webhook URL or key from this file (systemd credentials, Kubernetes secrets)",
    ),
    flag(
        "--config",
        Some("-c"),
        Some("WEIXIN_ROBOT_CONFIG"),
        Some("PATH"),
        None,
        "file with named robots and routing (see README); --key adds a robot named default",
    ),
    flag(
        "--listen",
        None,
        Some("WEIXIN_ROBOT_LISTEN"),
        Some("ADDR"),
        Some("0.0.0.0"),
        "address to listen on; IPv6 such as :: or ::1 accepted",
    ),
    flag(
        "--tz",
        None,
        Some("WEIXIN_ROBOT_TZ"),
        Some("OFFSET"),
        Some("+08:00"),
        "UTC offset used to display alert times, e.g. +08:00, -05:30, Z",
    ),
    flag(
        "--ca-file",
        None,
        Some("WEIXIN_ROBOT_CA_FILE"),
        Some("PATH"),
        None,
        "PEM file with extra CA certificates to trust (private proxies, tests)",
    ),
    flag(
        "--timeout",
        None,
        Some("WEIXIN_ROBOT_TIMEOUT"),
        Some("DURATION"),
        Some("10s"),
        "connect and read timeout for each request to WeCom",
    ),
    flag(
        "--rate",
        None,
        Some("WEIXIN_ROBOT_RATE"),
        Some("N/DURATION"),
        Some("20/60s"),
        "send budget per robot; WeCom allows 20 messages per minute",
    ),
    flag(
        "--dedup-window",
        None,
        Some("WEIXIN_ROBOT_DEDUP_WINDOW"),
        Some("DURATION"),
        Some("5m"),
        "drop a repeated identical firing notification within this window (0 disables)",
    ),
    flag(
        "--state-dir",
        None,
        Some("WEIXIN_ROBOT_STATE_DIR"),
        Some("DIR"),
        None,
        "keep the outbox on disk here so nothing accepted is lost across crashes",
    ),
    flag(
        "--grace",
        None,
        Some("WEIXIN_ROBOT_GRACE"),
        Some("DURATION"),
        Some("10s"),
        "on SIGTERM/SIGINT, keep delivering this long before exiting",
    ),
    flag(
        "--queue-max-messages",
        None,
        Some("WEIXIN_ROBOT_QUEUE_MAX_MESSAGES"),
        Some("N"),
        Some("10000"),
        "outbox limit in messages; when full, /alertinfo answers 503 so Alertmanager retries",
    ),
    flag(
        "--queue-max-bytes",
        None,
        Some("WEIXIN_ROBOT_QUEUE_MAX_BYTES"),
        Some("BYTES"),
        Some("64MiB"),
        "outbox limit in bytes of rendered messages",
    ),
    flag(
        "--retry-initial",
        None,
        Some("WEIXIN_ROBOT_RETRY_INITIAL"),
        Some("DURATION"),
        Some("1s"),
        "first backoff after a retryable failure (doubles, with jitter)",
    ),
    flag(
        "--retry-max",
        None,
        Some("WEIXIN_ROBOT_RETRY_MAX"),
        Some("DURATION"),
        Some("60s"),
        "longest backoff between retries",
    ),
    flag(
        "--max-body",
        None,
        Some("WEIXIN_ROBOT_MAX_BODY"),
        Some("BYTES"),
        Some("4MiB"),
        "largest accepted request body; larger → 413",
    ),
    flag(
        "--max-header-bytes",
        None,
        Some("WEIXIN_ROBOT_MAX_HEADER_BYTES"),
        Some("BYTES"),
        Some("64KiB"),
        "largest request head; larger → 431 and the connection is closed",
    ),
    flag(
        "--max-connections",
        None,
        Some("WEIXIN_ROBOT_MAX_CONNECTIONS"),
        Some("N"),
        Some("4096"),
        "open connections at most; past it, new ones get 503 and are closed",
    ),
    flag(
        "--request-timeout",
        None,
        Some("WEIXIN_ROBOT_REQUEST_TIMEOUT"),
        Some("DURATION"),
        Some("10s"),
        "a request must arrive this soon after connect or the previous answer; else 408, closed",
    ),
    flag(
        "--auth-token-file",
        None,
        Some("WEIXIN_ROBOT_AUTH_TOKEN_FILE"),
        Some("PATH"),
        None,
        "require \"Authorization: Bearer <token>\" on /alertinfo and /metrics",
    ),
    flag(
        "--basic-auth-file",
        None,
        Some("WEIXIN_ROBOT_BASIC_AUTH_FILE"),
        Some("PATH"),
        None,
        "require HTTP basic auth on /alertinfo and /metrics; user:password per line",
    ),
    flag(
        "--allow-key-param",
        None,
        Some("WEIXIN_ROBOT_ALLOW_KEY_PARAM"),
        None,
        None,
        "accept POST /alertinfo?key=URL|KEY, as other relays do (off: the key ends up in URLs)",
    ),
    flag(
        "--dry-run",
        None,
        Some("WEIXIN_ROBOT_DRY_RUN"),
        None,
        None,
        "print each message to stdout instead of sending it; no key needed",
    ),
    flag("--help", Some("-h"), None, None, None, "print this help and exit"),
    flag("--version", Some("-V"), None, None, None, "print version, target and git revision"),
];

/// What the user typed, before any checking. Missing means "not given" (flag nor env).
#[derive(Clone, Default, Debug)]
pub struct RawArgs {
    pub command: Command,
    pub help: bool,
    pub version: bool,
    pub dry_run: bool,
    pub allow_key_param: bool,
    values: Vec<(&'static str, String)>,
    /// Flags given on the command line (as opposed to through the environment).
    from_command_line: Vec<&'static str>,
}

/// What to do: run the relay (the default), or one of the helper commands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Command {
    #[default]
    Serve,
    /// `render [FILE|-]`: print the messages a payload would become; `None` reads stdin.
    Render(Option<PathBuf>),
    /// `send-test`: send one test message and print WeCom's answer.
    SendTest,
    /// `healthcheck`: exit 0 when the relay on --listen/--port answers /healthz (for images
    /// without a shell).
    Healthcheck,
}

impl RawArgs {
    /// Value of a flag, from the command line or else from its environment variable.
    fn get(&self, long: &str) -> Option<&str> {
        self.values.iter().find(|(name, _)| *name == long).map(|(_, v)| v.as_str())
    }

    /// Value of a flag or its documented default.
    fn get_or_default(&self, long: &str) -> Option<&str> {
        self.get(long).or_else(|| find_flag(long).and_then(|f| f.default))
    }
}

fn find_flag(long: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.long == long)
}

/// Errors that end start-up with exit code 2. None of them carries the webhook key.
#[derive(Debug)]
pub enum Error {
    Args(String),
    Invalid { flag: &'static str, reason: String },
    KeyFile { path: PathBuf, source: std::io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Args(msg) => write!(f, "{msg}"),
            Error::Invalid { flag, reason } => write!(f, "invalid {flag}: {reason}"),
            Error::KeyFile { path, source } => {
                write!(f, "reading key file {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::KeyFile { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid { flag, reason: reason.into() }
}

/// Reads flags with pico-args, then fills the gaps from the environment.
/// `env` is passed in so tests need not touch the process environment.
pub fn parse_args(
    args: Vec<std::ffi::OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RawArgs, Error> {
    let mut args = args;
    let mut raw = RawArgs::default();
    let is_command = |a: &std::ffi::OsString, name: &str| a.to_str() == Some(name);
    if let Some(first) = args.first() {
        if is_command(first, "render") {
            raw.command = Command::Render(None);
            args.remove(0);
        } else if is_command(first, "send-test") {
            raw.command = Command::SendTest;
            args.remove(0);
        } else if is_command(first, "healthcheck") {
            raw.command = Command::Healthcheck;
            args.remove(0);
        }
    }
    let mut pargs = pico_args::Arguments::from_vec(args);
    for flag in FLAGS {
        let keys: pico_args::Keys = match flag.short {
            Some(short) => [short, flag.long].into(),
            None => flag.long.into(),
        };
        if flag.value.is_none() {
            let from_env = flag.env.and_then(env).is_some_and(|v| is_truthy(&v));
            let present = pargs.contains(keys) || from_env;
            match flag.long {
                "--help" => raw.help = present,
                "--version" => raw.version = present,
                "--dry-run" => raw.dry_run = present,
                "--allow-key-param" => raw.allow_key_param = present,
                _ => {}
            }
            continue;
        }
        let given: Option<String> = pargs.opt_value_from_str(keys).map_err(|e| {
            // pico-args echoes the offending value for parse errors; keep only the flag name
            // so a mistyped key never lands in the terminal scrollback or journal.
            Error::Args(match e {
                pico_args::Error::OptionWithoutAValue(name) => format!("{name} needs a value"),
                pico_args::Error::NonUtf8Argument => format!("{}: not valid UTF-8", flag.long),
                _ => format!("{}: cannot read its value", flag.long),
            })
        })?;
        if given.is_some() {
            raw.from_command_line.push(flag.long);
        }
        let value = given.or_else(|| flag.env.and_then(|name| env(name).filter(|v| !v.is_empty())));
        if let Some(value) = value {
            raw.values.push((flag.long, value));
        }
    }
    let mut rest = pargs.finish();
    if raw.command == Command::Render(None) && !rest.is_empty() {
        let file = rest.remove(0);
        if file != "-" {
            raw.command = Command::Render(Some(PathBuf::from(file)));
        }
    }
    if let Some(first) = rest.first() {
        let shown = first.to_string_lossy();
        let shown = if shown.starts_with('-') { shown.into_owned() } else { "a value".into() };
        return Err(Error::Args(format!("unexpected argument {shown} (see --help)")));
    }
    Ok(raw)
}

fn is_truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// `--help` text, generated from [`FLAGS`].
pub fn help_text() -> String {
    let mut out = String::new();
    out.push_str(concat!(
        "weixin-robot ",
        env!("CARGO_PKG_VERSION"),
        "\nRelay Prometheus Alertmanager webhook notifications to a WeCom group robot.\n\n",
        "USAGE:\n    weixin-robot --key-file PATH [OPTIONS]\n",
        "    weixin-robot render [FILE|-] [--tz OFFSET]   print the messages a payload becomes\n",
        "    weixin-robot send-test --key-file PATH       send one test message, show the answer\n",
        "    weixin-robot healthcheck [--port PORT]       exit 0 when the relay answers /healthz\n",
        "    weixin-robot --port 6000 --key https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...\n\n",
        "Alertmanager posts to http://HOST:PORT/alertinfo.\n\nOPTIONS:\n"
    ));
    for flag in FLAGS {
        let mut left = String::from("    ");
        if let Some(short) = flag.short {
            left.push_str(short);
            left.push_str(", ");
        }
        left.push_str(flag.long);
        if let Some(value) = flag.value {
            left.push(' ');
            left.push_str(value);
        }
        out.push_str(&format!("{left:<40}{}", flag.help));
        let mut extra = Vec::new();
        if let Some(default) = flag.default {
            extra.push(format!("default {default}"));
        }
        if let Some(env) = flag.env {
            extra.push(format!("env {env}"));
        }
        if !extra.is_empty() {
            out.push_str(&format!(" [{}]", extra.join(", ")));
        }
        out.push('\n');
    }
    out.push_str("\nRUST_LOG sets the log level (default info).\n");
    out
}

/// The webhook URL with the key inside. Only [`WebhookUrl::expose`] hands out the real URL,
/// and only the WeCom client calls it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    full: String,
    redacted: String,
}

impl WebhookUrl {
    /// Accepts a full `http(s)://host/path?key=…` URL or a bare key. Errors never echo the input.
    pub fn parse(input: &str) -> Result<WebhookUrl, String> {
        let input = input.trim();
        if input.is_empty() {
            return Err("empty: give the webhook URL or key".into());
        }
        if !input.contains("://") {
            if !input.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err("a bare key may only hold letters, digits, '-' and '_'".into());
            }
            return WebhookUrl::parse(&format!("{WECOM_SEND_URL}?key={input}"));
        }
        let url = url::Url::parse(input).map_err(|e| format!("not a URL: {e}"))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err("the URL must start with https:// (or http://)".into());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL has no host".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the URL must not carry user:password@".into());
        }
        let has_key = url.query_pairs().any(|(k, v)| k == "key" && !v.is_empty());
        if !has_key {
            return Err("the URL has no key=… query parameter".into());
        }
        let mut redacted = url.clone();
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "key" { "***".to_string() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        redacted.query_pairs_mut().clear().extend_pairs(pairs);
        Ok(WebhookUrl { full: url.to_string(), redacted: redacted.to_string().replace("%2A", "*") })
    }

    /// The real URL including the key. Call sites: the WeCom client only.
    pub fn expose(&self) -> &str {
        &self.full
    }

    pub fn is_https(&self) -> bool {
        self.full.starts_with("https://")
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WebhookUrl({})", self.redacted)
    }
}

/// A fixed UTC offset for displaying times; Alertmanager sends any offset, people want one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TzOffset {
    pub seconds: i32,
}

impl TzOffset {
    pub fn parse(s: &str) -> Result<TzOffset, String> {
        let s = s.trim();
        if s == "Z" || s == "z" || s.eq_ignore_ascii_case("utc") {
            return Ok(TzOffset { seconds: 0 });
        }
        let b = s.as_bytes();
        let sign = match b.first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err("expected +HH:MM, -HH:MM or Z".into()),
        };
        let rest = &s[1..];
        let (h, m) = match rest.split_once(':') {
            Some((h, m)) => (h, m),
            None if rest.len() == 4 => rest.split_at(2),
            None => (rest, "0"),
        };
        let digits =
            |x: &str| !x.is_empty() && x.len() <= 2 && x.bytes().all(|c| c.is_ascii_digit());
        if !digits(h) || !digits(m) {
            return Err("expected +HH:MM, -HH:MM or Z".into());
        }
        let (h, m): (i32, i32) = (h.parse().unwrap_or(99), m.parse().unwrap_or(99));
        if h > 14 || m > 59 {
            return Err("offset out of range (-14:00..+14:00)".into());
        }
        Ok(TzOffset { seconds: sign * (h * 3600 + m * 60) })
    }
}

impl fmt::Display for TzOffset {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let sign = if self.seconds < 0 { '-' } else { '+' };
        let abs = self.seconds.abs();
        write!(f, "{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)
    }
}

/// A send budget: at most `messages` within any `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub messages: u32,
    pub window: Duration,
}

impl Rate {
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (n, w) = s.split_once('/').ok_or("expected N/DURATION such as 20/60s")?;
        let messages: u32 = n.trim().parse().map_err(|_| "N must be a whole number")?;
        let window = parse_duration(w)?;
        if messages == 0 || window.is_zero() {
            return Err("both N and DURATION must be above zero".into());
        }
        Ok(Rate { messages, window })
    }
}

/// `250ms`, `10s`, `5m`, `1h`, or a bare number of seconds; `0` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration such as 10s"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `4096`, `64KiB`, `4MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: u64 = num.parse().map_err(|_| format!("{s:?} is not a size such as 4MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("{s:?}: unknown unit (use KiB, MiB or GiB)")),
    };
    value.checked_mul(mult).ok_or_else(|| format!("{s:?} is out of range"))
}

/// One robot: where its messages go and how fast.
#[derive(Clone, Debug)]
pub struct RobotConfig {
    pub name: String,
    /// `None` only with `--dry-run` (or for commands that send nothing).
    pub webhook: Option<WebhookUrl>,
    pub rate: Rate,
    pub msgtype: crate::wecom::MsgType,
    /// Replaces the built-in layout; checked when the file loads.
    pub template: Option<std::sync::Arc<crate::template::Template>>,
    /// Mentioned on every notification with a firing alert.
    pub mention: config_file::MentionEntry,
}

/// The checked settings the program runs on.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// The single robot given by --key/--key-file (the one named `default`), if any.
    pub webhook: Option<WebhookUrl>,
    /// Every robot, from --key and from --config; never empty when serving.
    pub robots: Vec<RobotConfig>,
    /// The robot that gets what no route picks.
    pub default_robot: String,
    /// A label whose value names the robot for a notification.
    pub route_label: String,
    /// `[[mentions]]` rules from the config file (robot names checked).
    pub mention_rules: Vec<config_file::MentionRule>,
    pub dry_run: bool,
    pub tz: TzOffset,
    pub ca_file: Option<PathBuf>,
    pub send_timeout: Duration,
    /// `--rate`: the budget of the `default` robot and of robots made for `?key=`.
    pub rate: Rate,
    pub allow_key_param: bool,
    pub dedup_window: Duration,
    pub state_dir: Option<PathBuf>,
    pub grace: Duration,
    pub queue_max_messages: usize,
    pub queue_max_bytes: u64,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_body_bytes: u64,
    pub max_header_bytes: u64,
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub auth_token_file: Option<PathBuf>,
    pub basic_auth_file: Option<PathBuf>,
}

impl Config {
    pub fn from_raw(raw: &RawArgs) -> Result<Config, Error> {
        let port: u16 = raw
            .get_or_default("--port")
            .unwrap_or("6000")
            .trim()
            .parse()
            .map_err(|_| invalid("--port", "expected a number from 0 to 65535"))?;
        let listen_text = raw.get_or_default("--listen").unwrap_or("0.0.0.0");
        let ip: IpAddr =
            listen_text
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| invalid("--listen", "expected an IP address such as 0.0.0.0 or ::"))?;

        // The command line beats the environment across the pair, so a unit that passes
        // --key-file still works when an environment file also sets KEY.
        let on_cli = |f: &str| raw.from_command_line.contains(&f);
        let (key, key_file) = match (raw.get("--key"), raw.get("--key-file")) {
            (Some(k), Some(f)) if on_cli("--key") != on_cli("--key-file") => {
                if on_cli("--key") {
                    (Some(k), None)
                } else {
                    (None, Some(f))
                }
            }
            pair => pair,
        };
        let key_text = match (key, key_file) {
            (Some(_), Some(_)) => {
                return Err(Error::Args("give either --key or --key-file, not both".into()))
            }
            (Some(key), None) => Some(key.to_string()),
            (None, Some(path)) => {
                let path = PathBuf::from(path);
                Some(read_key_file(&path).map_err(|source| Error::KeyFile { path, source })?)
            }
            (None, None)
                if raw.dry_run
                    || raw.get("--config").is_some()
                    || matches!(raw.command, Command::Render(_) | Command::Healthcheck) =>
            {
                None
            }
            (None, None) => {
                return Err(Error::Args(
                    "missing webhook key: pass --key, --key-file, --config or set KEY".into(),
                ))
            }
        };
        let flag_name = if key.is_some() { "--key" } else { "--key-file" };
        let webhook = key_text
            .map(|text| WebhookUrl::parse(&text).map_err(|r| invalid(flag_name, r)))
            .transpose()?;

        let duration = |flag: &'static str| -> Result<Duration, Error> {
            parse_duration(raw.get_or_default(flag).unwrap_or("0")).map_err(|r| invalid(flag, r))
        };
        let bytes = |flag: &'static str| -> Result<u64, Error> {
            parse_bytes(raw.get_or_default(flag).unwrap_or("0")).map_err(|r| invalid(flag, r))
        };

        let send_timeout = duration("--timeout")?;
        if send_timeout.is_zero() {
            return Err(invalid("--timeout", "must be above zero"));
        }
        let retry_initial = duration("--retry-initial")?;
        let retry_max = duration("--retry-max")?;
        if retry_initial.is_zero() || retry_max < retry_initial {
            return Err(invalid("--retry-max", "need 0 < --retry-initial <= --retry-max"));
        }
        let count = |flag: &'static str| -> Result<usize, Error> {
            raw.get_or_default(flag)
                .unwrap_or("0")
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid(flag, "expected a number above zero"))
        };
        let queue_max_messages = count("--queue-max-messages")?;
        let max_connections = count("--max-connections")?;
        let queue_max_bytes = bytes("--queue-max-bytes")?;
        let max_body_bytes = bytes("--max-body")?;
        let max_header_bytes = bytes("--max-header-bytes")?;
        if max_body_bytes == 0 || max_header_bytes == 0 {
            return Err(invalid("--max-body", "sizes must be above zero"));
        }
        let request_timeout = duration("--request-timeout")?;
        if request_timeout.is_zero() {
            return Err(invalid("--request-timeout", "must be above zero"));
        }

        let rate = Rate::parse(raw.get_or_default("--rate").unwrap_or("20/60s"))
            .map_err(|r| invalid("--rate", r))?;
        let (robots, default_robot, route_label, mention_rules) =
            robots(raw.get("--config").map(Path::new), webhook.as_ref(), rate, raw.dry_run)?;
        Ok(Config {
            listen: SocketAddr::new(ip, port),
            webhook,
            robots,
            default_robot,
            route_label,
            mention_rules,
            dry_run: raw.dry_run,
            tz: TzOffset::parse(raw.get_or_default("--tz").unwrap_or("+08:00"))
                .map_err(|r| invalid("--tz", r))?,
            ca_file: raw.get("--ca-file").map(PathBuf::from),
            send_timeout,
            rate,
            allow_key_param: raw.allow_key_param,
            dedup_window: duration("--dedup-window")?,
            state_dir: raw.get("--state-dir").map(PathBuf::from),
            grace: duration("--grace")?,
            queue_max_messages,
            queue_max_bytes,
            retry_initial,
            retry_max,
            max_body_bytes,
            max_header_bytes,
            max_connections,
            request_timeout,
            auth_token_file: raw.get("--auth-token-file").map(PathBuf::from),
            basic_auth_file: raw.get("--basic-auth-file").map(PathBuf::from),
        })
    }
}

/// A key file's key: the first line that is not blank or a `#` comment (so a packaged
/// placeholder can explain itself); empty when there is none, which the URL check reports.
fn read_key_file(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let key = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
    Ok(key.unwrap_or("").to_string())
}

/// The robots: `default` from --key (if given), plus every `[robots.NAME]` of the file.
fn robots(
    file: Option<&Path>,
    cli_webhook: Option<&WebhookUrl>,
    cli_rate: Rate,
    dry_run: bool,
) -> Result<RobotSetup, Error> {
    let mut robots = Vec::new();
    if file.is_none() || cli_webhook.is_some() {
        robots.push(RobotConfig {
            name: "default".into(),
            webhook: cli_webhook.cloned(),
            rate: cli_rate,
            msgtype: crate::wecom::MsgType::Markdown,
            template: None,
            mention: config_file::MentionEntry::default(),
        });
    }
    let Some(path) = file else {
        return Ok((robots, "default".into(), DEFAULT_ROUTE_LABEL.into(), Vec::new()));
    };
    let bad = |reason: String| Error::Invalid { flag: "--config", reason };
    let parsed = config_file::load(path).map_err(bad)?;
    for entry in parsed.robots {
        let where_ = format!("{}: [robots.{}]", path.display(), entry.name);
        if robots.iter().any(|r| r.name == entry.name) {
            return Err(bad(format!("{where_}: also given by --key (named default)")));
        }
        let key_text = match (&entry.key, &entry.key_file) {
            (Some(_), Some(_)) => {
                return Err(bad(format!("{where_}: give key or key_file, not both")))
            }
            (Some(k), None) => Some(k.clone()),
            (None, Some(p)) => Some(
                read_key_file(p)
                    .map_err(|e| bad(format!("{where_}: reading {}: {e}", p.display())))?,
            ),
            (None, None) if dry_run => None,
            (None, None) => return Err(bad(format!("{where_}: needs key or key_file"))),
        };
        let webhook = key_text
            .map(|t| WebhookUrl::parse(&t).map_err(|r| bad(format!("{where_}: key: {r}"))))
            .transpose()?;
        let rate = match &entry.rate {
            Some(r) => Rate::parse(r).map_err(|e| bad(format!("{where_}: rate: {e}")))?,
            None => cli_rate,
        };
        let msgtype = match &entry.msgtype {
            Some(m) => {
                crate::wecom::MsgType::parse(m).map_err(|e| bad(format!("{where_}: {e}")))?
            }
            None => crate::wecom::MsgType::Markdown,
        };
        let template = match &entry.template {
            Some(p) => Some(std::sync::Arc::new(
                crate::template::load(p).map_err(|e| bad(format!("{where_}: template {e}")))?,
            )),
            None => None,
        };
        robots.push(RobotConfig {
            name: entry.name,
            webhook,
            rate,
            msgtype,
            template,
            mention: entry.mention,
        });
    }
    if robots.is_empty() {
        return Err(bad(format!("{}: defines no robots", path.display())));
    }
    let default_robot = match parsed.default_robot {
        Some(name) if robots.iter().any(|r| r.name == name) => name,
        Some(name) => {
            return Err(bad(format!("{}: default_robot {name:?} is not defined", path.display())))
        }
        None if robots.len() == 1 => robots[0].name.clone(),
        None if robots.iter().any(|r| r.name == "default") => "default".into(),
        None => return Err(bad(format!("{}: several robots: set default_robot", path.display()))),
    };
    let route_label = parsed.route_label.unwrap_or_else(|| DEFAULT_ROUTE_LABEL.into());
    for rule in &parsed.mentions {
        if let Some(name) = &rule.robot {
            if !robots.iter().any(|r| &r.name == name) {
                return Err(bad(format!(
                    "{}: [[mentions]] names robot {name:?}, which is not defined",
                    path.display()
                )));
            }
        }
    }
    Ok((robots, default_robot, route_label, parsed.mentions))
}

/// Robots, the default robot, the routing label and the mention rules.
type RobotSetup = (Vec<RobotConfig>, String, String, Vec<config_file::MentionRule>);

/// The label that routes a notification when the config file names no other.
pub const DEFAULT_ROUTE_LABEL: &str = "wecom_robot";

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(args: &[&str], env: &[(&str, &str)]) -> Result<RawArgs, Error> {
        let env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_args(args.iter().map(Into::into).collect(), &move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Result<Config, Error> {
        Config::from_raw(&raw(args, env)?)
    }

    #[test]
    fn old_tool_command_line_works() -> Result<(), Error> {
        let c = config(
            &[
                "--port",
                "6001",
                "--key",
                "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=SECRET1",
            ],
            &[],
        )?;
        assert_eq!(c.listen.port(), 6001);
        assert_eq!(
            c.webhook.as_ref().map(WebhookUrl::expose).unwrap_or_default(),
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=SECRET1"
        );
        assert_eq!(c.tz.seconds, 8 * 3600);
        Ok(())
    }

    #[test]
    fn env_port_and_bare_key() -> Result<(), Error> {
        let c = config(&[], &[("PORT", "7000"), ("KEY", "abc-123")])?;
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(
            c.webhook.as_ref().map(WebhookUrl::expose).unwrap_or_default(),
            format!("{WECOM_SEND_URL}?key=abc-123")
        );
        assert_eq!(c.webhook.map(|w| w.to_string()), Some(format!("{WECOM_SEND_URL}?key=***")));
        Ok(())
    }

    #[test]
    fn flag_beats_env() -> Result<(), Error> {
        let c = config(&["-p", "1234", "-k", "K1"], &[("PORT", "7000"), ("KEY", "K2")])?;
        assert_eq!(c.listen.port(), 1234);
        assert!(c.webhook.as_ref().map(WebhookUrl::expose).unwrap_or_default().ends_with("key=K1"));
        Ok(())
    }

    #[test]
    fn errors_never_echo_the_key() {
        for bad in [
            "ftp://x/?key=SECRET9",
            "https:///?key=SECRET9",
            "https://h/send?nokey=SECRET9",
            "SECRET9 with space",
        ] {
            let err = config(&["--key", bad], &[]).expect_err(bad).to_string();
            assert!(!err.contains("SECRET9"), "{err}");
            assert!(err.starts_with("invalid --key"), "{err}");
        }
        let err =
            config(&["--bogus", "SECRET9", "-k", "x"], &[]).expect_err("unknown flag").to_string();
        assert!(err.contains("--bogus") && !err.contains("SECRET9"), "{err}");
    }

    #[test]
    fn command_line_key_file_beats_key_from_the_environment() -> Result<(), Error> {
        let dir = std::env::temp_dir().join(format!("wxr-keyfile-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("key");
        let _ = std::fs::write(&path, "FROMFILE\n");
        let p = path.to_str().unwrap_or_default();
        let c = config(&["--key-file", p], &[("KEY", "FROMENV")])?;
        assert!(c.webhook.map(|w| w.expose().ends_with("key=FROMFILE")).unwrap_or(false));
        let err = config(&["--key-file", p, "--key", "X"], &[]).expect_err("both on the cli");
        assert!(err.to_string().contains("not both"));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn missing_key_is_an_error() {
        let err = config(&[], &[]).expect_err("no key").to_string();
        assert!(err.contains("missing webhook key"), "{err}");
    }

    #[test]
    fn dry_run_needs_no_key() -> Result<(), Error> {
        let c = config(&[], &[("WEIXIN_ROBOT_DRY_RUN", "1")])?;
        assert!(c.dry_run && c.webhook.is_none());
        let c = config(&["--dry-run", "-k", "k"], &[])?;
        assert!(c.dry_run && c.webhook.is_some());
        Ok(())
    }

    #[test]
    fn listen_accepts_ipv6() -> Result<(), Error> {
        let c = config(&["-k", "k", "--listen", "::1"], &[])?;
        assert!(c.listen.is_ipv6());
        Ok(())
    }

    #[test]
    fn tz_offsets() {
        assert_eq!(TzOffset::parse("+08:00").map(|t| t.seconds), Ok(28800));
        assert_eq!(TzOffset::parse("-05:30").map(|t| t.seconds), Ok(-19800));
        assert_eq!(TzOffset::parse("Z").map(|t| t.seconds), Ok(0));
        assert_eq!(TzOffset::parse("+0530").map(|t| t.seconds), Ok(19800));
        assert!(TzOffset::parse("8").is_err());
        assert!(TzOffset::parse("+25:00").is_err());
        assert_eq!(TzOffset { seconds: -19800 }.to_string(), "-05:30");
    }

    #[test]
    fn durations_rates_bytes() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(
            Rate::parse("20/60s"),
            Ok(Rate { messages: 20, window: Duration::from_secs(60) })
        );
        assert!(Rate::parse("0/60s").is_err());
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
    }

    /// The README's flag table, generated from [`FLAGS`] (a unit test keeps README.md in step).
    pub fn markdown_table() -> String {
        let mut out = String::from("| Flag | Env | Default | What it does |\n|---|---|---|---|\n");
        for flag in FLAGS {
            let name = match (flag.short, flag.value) {
                (Some(short), Some(value)) => format!("`{short}`, `{} {value}`", flag.long),
                (Some(short), None) => format!("`{short}`, `{}`", flag.long),
                (None, Some(value)) => format!("`{} {value}`", flag.long),
                (None, None) => format!("`{}`", flag.long),
            };
            let env = flag.env.map_or_else(String::new, |e| format!("`{e}`"));
            let default = flag.default.map_or_else(String::new, |d| format!("`{d}`"));
            let row =
                format!("| {name} | {env} | {default} | {} |\n", flag.help.replace('|', "\\|"));
            out.push_str(&row.replace("URL|KEY", "URL\\|KEY"));
        }
        out
    }

    /// The man page, generated from [`FLAGS`] like `--help`.
    fn man_page() -> String {
        let esc = |t: &str| t.replace('\\', "\\e").replace('-', "\\-");
        let mut out = String::from(
            ".TH WEIXIN-ROBOT 1 \"\" \"weixin-robot\" \"User Commands\"\n\
             .SH NAME\nweixin\\-robot \\- relay Prometheus Alertmanager webhooks to WeCom group robots\n\
             .SH SYNOPSIS\n.B weixin\\-robot\n[\\fIOPTIONS\\fR]\n.br\n.B weixin\\-robot render\n[\\fIFILE\\fR|\\-] [\\-\\-tz \\fIOFFSET\\fR]\n.br\n.B weixin\\-robot send\\-test\n\\-\\-key\\-file \\fIPATH\\fR\n\
             .SH DESCRIPTION\nAccepts Alertmanager webhook notifications on \\fBPOST /alertinfo\\fR and delivers them \
             to a WeCom (企业微信) group robot as markdown messages, within WeCom's rate limit, \
             with retries, deduplication and an optional on-disk outbox.\n.SH OPTIONS\n",
        );
        for flag in FLAGS {
            out.push_str(".TP\n.B ");
            if let Some(short) = flag.short {
                out.push_str(&format!("{}, ", esc(short)));
            }
            out.push_str(&esc(flag.long));
            if let Some(value) = flag.value {
                out.push_str(&format!(" \\fI{}\\fR", esc(value)));
            }
            out.push('\n');
            out.push_str(&esc(flag.help));
            let mut extra = Vec::new();
            if let Some(d) = flag.default {
                extra.push(format!("Default: {}.", esc(d)));
            }
            if let Some(e) = flag.env {
                extra.push(format!("Environment: \\fB{}\\fR.", esc(e)));
            }
            if !extra.is_empty() {
                out.push_str(&format!(". {}", extra.join(" ")));
            }
            out.push('\n');
        }
        out.push_str(
            ".SH EXIT STATUS\n0 clean shutdown, 1 runtime failure, 2 invalid command line or configuration.\n\
             .SH ENVIRONMENT\n\\fBRUST_LOG\\fR sets the log level (default info). \
             \\fBHTTPS_PROXY\\fR, \\fBNO_PROXY\\fR are honoured.\n\
             .SH FILES\n/etc/weixin\\-robot/key, /etc/default/weixin\\-robot or /etc/sysconfig/weixin\\-robot, \
             /var/lib/weixin\\-robot (outbox spool).\n.SH SEE ALSO\n/usr/share/doc/weixin\\-robot/README.md\n",
        );
        out
    }

    #[test]
    fn man_page_is_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/weixin-robot.1");
        let want = man_page();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            let _ = std::fs::write(&path, &want);
            return;
        }
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            current, want,
            "packaging/weixin-robot.1 is stale: UPDATE_DOCS=1 cargo test man_page"
        );
    }

    /// README.md carries the flag table between markers; `UPDATE_DOCS=1 cargo test readme`
    /// rewrites it.
    #[test]
    fn readme_flags_table_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let readme = std::fs::read_to_string(&path).unwrap_or_default();
        let (start, end) = ("<!-- flags:start -->\n", "<!-- flags:end -->");
        let (Some(a), Some(b)) = (readme.find(start), readme.find(end)) else {
            panic!("README.md lacks the flags markers");
        };
        let current = &readme[a + start.len()..b];
        let want = markdown_table();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            let updated = format!("{}{want}{}", &readme[..a + start.len()], &readme[b..]);
            let _ = std::fs::write(&path, updated);
            return;
        }
        assert_eq!(current, want, "README flag table is stale: UPDATE_DOCS=1 cargo test readme");
    }

    #[test]
    fn help_lists_every_flag() {
        let help = help_text();
        for flag in FLAGS {
            assert!(help.contains(flag.long), "{}", flag.long);
        }
    }
}
