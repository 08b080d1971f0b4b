//! The command line: every flag defined once in [`FLAGS`] (name, env var, default, help), the
//! parser that turns arguments and environment into [`RawArgs`], and `--help`, the README flag
//! table and the man page, all generated from that table so they cannot drift from the parser.
//!
//! Like ripgrep's low/high args: [`RawArgs`] holds the strings the user gave;
//! [`crate::config::Config::from_raw`] checks them. No error here ever echoes the value of a
//! flag, so a mistyped webhook key stays out of terminals and journals.

use std::fmt;
use std::path::PathBuf;

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
        "WeCom robot webhook URL or bare key (masked in ps once started; prefer --key-file)",
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
        "do not send an alert state the group was told within this window again (0 disables)",
    ),
    flag(
        "--max-delay",
        None,
        Some("WEIXIN_ROBOT_MAX_DELAY"),
        Some("DURATION"),
        Some("2m"),
        "storm mode: longest a change may wait before the group sees it; when the budget \
         cannot show everything pending by then, a digest and a file tell it",
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
        "outbox limit in estimated bytes of pending messages; past it 503",
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
        "--max-alerts",
        None,
        Some("WEIXIN_ROBOT_MAX_ALERTS"),
        Some("N"),
        Some("5000"),
        "most alerts in one notification; more → 413 (Alertmanager's max_alerts keeps it below)",
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
        "--max-headers",
        None,
        Some("WEIXIN_ROBOT_MAX_HEADERS"),
        Some("N"),
        Some("32"),
        "most headers a request may carry (at most 64; proxies and sidecars add some); more → 431",
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
        "a request must arrive this soon after connect or the previous answer; else 408 (idle: closed)",
    ),
    flag(
        "--max-unsent-bytes",
        None,
        Some("WEIXIN_ROBOT_MAX_UNSENT_BYTES"),
        Some("BYTES"),
        Some("64KiB"),
        "answers a client may leave unread; past it its connection reads nothing more",
    ),
    flag(
        "--max-body-in-flight",
        None,
        Some("WEIXIN_ROBOT_MAX_BODY_IN_FLIGHT"),
        Some("BYTES"),
        Some("32MiB"),
        "request bodies held at once across all connections; past it → 503 (retried)",
    ),
    flag(
        "--dedup-max-entries",
        None,
        Some("WEIXIN_ROBOT_DEDUP_MAX_ENTRIES"),
        Some("N"),
        Some("100000"),
        "notifications, and alert states told, each robot remembers for --dedup-window; past it the oldest go",
    ),
    flag(
        "--max-key-robots",
        None,
        Some("WEIXIN_ROBOT_MAX_KEY_ROBOTS"),
        Some("N"),
        Some("32"),
        "different ?key= robots at once (each a thread and an outbox); idle ones are evicted",
    ),
    flag(
        "--key-param-host",
        None,
        Some("WEIXIN_ROBOT_KEY_PARAM_HOST"),
        Some("HOST[:PORT]"),
        Some("qyapi.weixin.qq.com"),
        "the only host a ?key= URL may name (path /cgi-bin/webhook/send); e.g. a proxy",
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
    flag(
        "--log-format",
        None,
        Some("WEIXIN_ROBOT_LOG_FORMAT"),
        Some("text|logfmt|json"),
        Some("text"),
        "log line format: text for people, logfmt or json for log collectors",
    ),
    flag(
        "--digest",
        None,
        None,
        None,
        None,
        "render: preview storm mode (digest, attached file, compact messages) for FILE…",
    ),
    flag(
        "--with-file",
        None,
        None,
        None,
        None,
        "send-test: also upload a small file and send it as a file message",
    ),
    flag(
        "--robot",
        None,
        None,
        Some("NAME"),
        None,
        "render, send-test: the robot of --config to use (default: its default robot)",
    ),
    flag("--help", Some("-h"), None, None, None, "print this help and exit"),
    flag("--version", Some("-V"), None, None, None, "print version, target and git revision"),
];

/// A subcommand: the single source for its usage line, `--help` and the man page SYNOPSIS.
pub struct CommandDoc {
    pub name: &'static str,
    /// Positional arguments, as shown in usage.
    pub args: &'static str,
    pub about: &'static str,
    /// The flags it accepts (besides `--help`); only these are read from the environment.
    pub flags: &'static [&'static str],
}

/// The helper commands. Running without one serves (every flag applies).
pub const COMMANDS: &[CommandDoc] = &[
    CommandDoc {
        name: "render",
        args: "[FILE|-] | --digest FILE…",
        about: "print the messages a payload becomes, as the chosen robot would send them",
        flags: &["--config", "--robot", "--tz", "--max-body", "--digest", "--rate", "--max-delay"],
    },
    CommandDoc {
        name: "send-test",
        args: "",
        about: "send one test message with a robot's key and show WeCom's answer",
        flags: &[
            "--key",
            "--key-file",
            "--config",
            "--robot",
            "--ca-file",
            "--timeout",
            "--tz",
            "--with-file",
        ],
    },
    CommandDoc {
        name: "healthcheck",
        args: "",
        about: "exit 0 when the relay on --listen/--port answers /healthz (images without a shell)",
        flags: &["--port", "--listen"],
    },
    CommandDoc {
        name: "help",
        args: "[COMMAND]",
        about: "print this help, or a command's",
        flags: &[],
    },
    CommandDoc {
        name: "version",
        args: "",
        about: "print version, target and git revision",
        flags: &[],
    },
];

/// Where a value came from, so an error can point there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    CommandLine,
    Env(&'static str),
}

/// What the user typed, before any checking. Missing means "not given" (flag nor env).
/// `Debug` is written by hand: the values include `--key`, a secret.
#[derive(Clone, Default)]
pub struct RawArgs {
    pub command: Command,
    pub help: bool,
    pub version: bool,
    pub dry_run: bool,
    pub allow_key_param: bool,
    /// `render --digest`: preview storm mode.
    pub digest: bool,
    /// `send-test --with-file`: also try the file path.
    pub with_file: bool,
    values: Vec<(&'static str, String, Source)>,
}

impl std::fmt::Debug for RawArgs {
    /// Names each given flag and where it came from, never its value: `--key` is a secret and
    /// other values (paths, URLs) are not worth the risk of a `{:?}` in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let given: Vec<(&str, Source)> = self.values.iter().map(|(n, _, s)| (*n, *s)).collect();
        f.debug_struct("RawArgs")
            .field("command", &self.command)
            .field("help", &self.help)
            .field("version", &self.version)
            .field("dry_run", &self.dry_run)
            .field("allow_key_param", &self.allow_key_param)
            .field("digest", &self.digest)
            .field("with_file", &self.with_file)
            .field("given", &given)
            .finish()
    }
}

/// What to do: run the relay (the default), or one of the helper commands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Command {
    #[default]
    Serve,
    /// `render [FILE|-]`: print the messages a payload would become; `None` reads stdin.
    Render(Option<PathBuf>),
    /// `render --digest FILE…`: storm mode's digest, file and compact messages for several
    /// payloads; `-` (or no file) reads stdin.
    RenderDigest(Vec<PathBuf>),
    /// `send-test`: send one test message and print WeCom's answer.
    SendTest,
    /// `healthcheck`: exit 0 when the relay on --listen/--port answers /healthz (for images
    /// without a shell).
    Healthcheck,
}

impl Command {
    /// The subcommand's name; `None` for serving.
    pub fn name(&self) -> Option<&'static str> {
        match self {
            Command::Serve => None,
            Command::Render(_) | Command::RenderDigest(_) => Some("render"),
            Command::SendTest => Some("send-test"),
            Command::Healthcheck => Some("healthcheck"),
        }
    }

    /// Whether this command reads `flag` (from the command line or the environment).
    fn accepts(&self, flag: &Flag) -> bool {
        match self.name().and_then(find_command) {
            None => !matches!(flag.long, "--robot" | "--digest" | "--with-file"),
            Some(doc) => flag.long == "--help" || doc.flags.contains(&flag.long),
        }
    }
}

impl RawArgs {
    /// Value of a flag, from the command line or else from its environment variable.
    pub fn get(&self, long: &str) -> Option<&str> {
        self.values.iter().find(|(name, ..)| *name == long).map(|(_, v, _)| v.as_str())
    }

    /// Value of a flag or its documented default.
    pub fn get_or_default(&self, long: &str) -> Option<&str> {
        self.get(long).or_else(|| find_flag(long).and_then(|f| f.default))
    }

    /// Whether the flag was given on the command line (not through the environment).
    pub fn on_command_line(&self, long: &str) -> bool {
        self.source(long) == Some(Source::CommandLine)
    }

    fn source(&self, long: &str) -> Option<Source> {
        self.values.iter().find(|(name, ..)| *name == long).map(|(.., s)| *s)
    }

    /// Points an error about a flag's value at the environment variable it came from, if it
    /// did: `PORT=abc` → "invalid PORT (environment): …".
    pub fn locate(&self, e: Error) -> Error {
        match e {
            Error::Invalid { flag, reason } => match self.source(flag) {
                Some(Source::Env(var)) => Error::InvalidEnv { var, reason },
                _ => Error::Invalid { flag, reason },
            },
            e => e,
        }
    }
}

fn find_flag(long: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.long == long)
}

fn find_command(name: &str) -> Option<&'static CommandDoc> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// Errors that end start-up with exit code 2. None of them carries the webhook key.
#[derive(Debug)]
pub enum Error {
    Args(String),
    Invalid {
        flag: &'static str,
        reason: String,
    },
    /// A bad value from an environment variable (see [`RawArgs::locate`]).
    InvalidEnv {
        var: &'static str,
        reason: String,
    },
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Args(msg) => write!(f, "{msg}"),
            Error::Invalid { flag, reason } => write!(f, "invalid {flag}: {reason}"),
            Error::InvalidEnv { var, reason } => write!(f, "invalid {var} (environment): {reason}"),
            Error::KeyFile { path, source } => {
                let who = who_must_read(source);
                write!(f, "reading key file {}: {source}{who}", path.display())
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

/// For a key file we may not read: names the user that must read it (under systemd that is
/// the service user, not the root who wrote the file), so the fix is obvious. Empty otherwise.
pub fn who_must_read(e: &std::io::Error) -> String {
    if e.kind() != std::io::ErrorKind::PermissionDenied {
        return String::new();
    }
    // SAFETY: getuid cannot fail; getpwuid_r writes only into the buffers we pass it.
    let uid = unsafe { libc::getuid() };
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 4096];
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
    let name = if rc == 0 && !found.is_null() && !pw.pw_name.is_null() {
        // SAFETY: pw_name points into `buf`, NUL-terminated by getpwuid_r.
        unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned()
    } else {
        "?".to_string()
    };
    format!(
        " (the relay runs as user {name}, uid {uid}, which must be able to read it; \
         the packages use owner root, group weixin-robot, mode 0640)"
    )
}

pub fn invalid(flag: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid { flag, reason: reason.into() }
}

/// A positional argument is shown only when it looks like a command name: anything else
/// might be a key pasted in the wrong place.
fn shown_word(arg: &str) -> Option<&str> {
    let word = arg.len() <= 24
        && arg.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && arg.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    word.then_some(arg)
}

fn command_names() -> String {
    COMMANDS.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
}

/// Reads the command line (`--flag value`, `--flag=value`, `-p value`, `-p6000`), then fills
/// the gaps from the environment. Errors name the flag, never its value.
/// `env` is passed in so tests need not touch the process environment.
pub fn parse_args(
    args: Vec<std::ffi::OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RawArgs, Error> {
    let mut args: Vec<String> = args
        .into_iter()
        .map(|a| a.into_string().map_err(|_| Error::Args("an argument is not valid UTF-8".into())))
        .collect::<Result<_, _>>()?;
    let mut raw = RawArgs::default();
    let mut help_topic = false;
    if let Some(first) = args.first().filter(|a| !a.starts_with('-')) {
        match first.as_str() {
            "render" => raw.command = Command::Render(None),
            "send-test" => raw.command = Command::SendTest,
            "healthcheck" => raw.command = Command::Healthcheck,
            "help" => help_topic = true,
            "version" => raw.version = true,
            other => {
                return Err(Error::Args(match shown_word(other) {
                    Some(w) => {
                        format!("unknown command {w:?} (commands: {}; see --help)", command_names())
                    }
                    None => {
                        "unexpected argument (a value where a flag or command belongs; see --help)"
                            .into()
                    }
                }))
            }
        }
        args.remove(0);
    }
    let usage_hint = match raw.command.name() {
        Some(name) => format!("see weixin-robot {name} --help"),
        None => "see --help".into(),
    };
    let mut positional: Vec<String> = Vec::new();
    let mut given: Vec<&'static str> = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            positional.extend(it.by_ref());
            break;
        }
        let (name, inline) = if let Some(long) = arg.strip_prefix("--") {
            match long.split_once('=') {
                Some((n, v)) => (format!("--{n}"), Some(v.to_string())),
                None => (arg.clone(), None),
            }
        } else if arg.len() > 1 && arg.starts_with('-') {
            let split = arg.char_indices().nth(2).map_or(arg.len(), |(i, _)| i);
            let (n, rest) = arg.split_at(split);
            let rest = rest.strip_prefix('=').unwrap_or(rest);
            (n.to_string(), (!rest.is_empty()).then(|| rest.to_string()))
        } else {
            positional.push(arg);
            continue;
        };
        let flag = FLAGS.iter().find(|f| f.long == name || f.short == Some(name.as_str()));
        let Some(flag) = flag.filter(|f| raw.command.accepts(f)) else {
            let shown =
                if name.len() <= 40 && !name.contains("://") { name.as_str() } else { "an option" };
            return Err(Error::Args(match (flag, raw.command.name()) {
                (Some(_), Some(cmd)) => format!("{cmd} does not take {shown} ({usage_hint})"),
                _ => format!("unknown option {shown} ({usage_hint})"),
            }));
        };
        if given.contains(&flag.long) {
            return Err(Error::Args(format!("{} given twice", flag.long)));
        }
        given.push(flag.long);
        if flag.value.is_none() {
            if inline.is_some() {
                return Err(Error::Args(format!("{} takes no value", flag.long)));
            }
            set_switch(&mut raw, flag.long);
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| Error::Args(format!("{} needs a value", flag.long)))?,
        };
        raw.values.push((flag.long, value, Source::CommandLine));
    }
    let command = raw.command.clone();
    for flag in FLAGS.iter().filter(|f| command.accepts(f) && !given.contains(&f.long)) {
        let Some(var) = flag.env else { continue };
        let Some(value) = env(var).filter(|v| !v.is_empty()) else { continue };
        if flag.value.is_none() {
            match switch_value(&value) {
                Some(true) => set_switch(&mut raw, flag.long),
                Some(false) => {}
                None => {
                    return Err(Error::InvalidEnv {
                        var,
                        reason: "expected 1, true, yes, on or 0, false, no, off".into(),
                    })
                }
            }
        } else {
            raw.values.push((flag.long, value, Source::Env(var)));
        }
    }
    let mut positional = positional.into_iter();
    if help_topic {
        raw.help = true;
        if let Some(topic) = positional.next() {
            raw.command = match topic.as_str() {
                "render" => Command::Render(None),
                "send-test" => Command::SendTest,
                "healthcheck" => Command::Healthcheck,
                "help" | "version" => Command::Serve,
                other => {
                    return Err(Error::Args(format!(
                        "unknown command {:?} (commands: {})",
                        shown_word(other).unwrap_or("…"),
                        command_names()
                    )))
                }
            };
        }
    } else if raw.command == Command::Render(None) && raw.digest {
        raw.command = Command::RenderDigest(positional.by_ref().map(PathBuf::from).collect());
    } else if raw.command == Command::Render(None) {
        if let Some(file) = positional.next().filter(|f| f != "-") {
            raw.command = Command::Render(Some(PathBuf::from(file)));
        }
    }
    if let Some(extra) = positional.next() {
        return Err(Error::Args(match (raw.command.name(), shown_word(&extra)) {
            (None, Some(w)) => {
                format!("unknown command {w:?} (commands: {}; see --help)", command_names())
            }
            _ => format!("unexpected argument (a value where none belongs; {usage_hint})"),
        }));
    }
    Ok(raw)
}

fn set_switch(raw: &mut RawArgs, long: &str) {
    match long {
        "--help" => raw.help = true,
        "--version" => raw.version = true,
        "--dry-run" => raw.dry_run = true,
        "--allow-key-param" => raw.allow_key_param = true,
        "--digest" => raw.digest = true,
        "--with-file" => raw.with_file = true,
        _ => {}
    }
}

/// A switch set through the environment: `None` when the value means neither.
fn switch_value(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// One flag's line in `--help`.
fn help_line(flag: &Flag) -> String {
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
    let mut line = format!("{left:<40}{}", flag.help);
    let mut extra = Vec::new();
    if let Some(default) = flag.default {
        extra.push(format!("default {default}"));
    }
    if let Some(env) = flag.env {
        extra.push(format!("env {env}"));
    }
    if !extra.is_empty() {
        line.push_str(&format!(" [{}]", extra.join(", ")));
    }
    line.push('\n');
    line
}

/// `--help` text for serving (`None`) or one command, generated from [`FLAGS`] and
/// [`COMMANDS`].
pub fn help_text(command: Option<&str>) -> String {
    let mut out = format!("weixin-robot {}\n", env!("CARGO_PKG_VERSION"));
    if let Some(doc) = command.and_then(find_command) {
        let args = if doc.args.is_empty() { String::new() } else { format!(" {}", doc.args) };
        out.push_str(&format!(
            "{}\n\nUSAGE:\n    weixin-robot {}{args} [OPTIONS]\n\nOPTIONS:\n",
            doc.about, doc.name
        ));
        for flag in FLAGS.iter().filter(|f| f.long == "--help" || doc.flags.contains(&f.long)) {
            out.push_str(&help_line(flag));
        }
        return out;
    }
    out.push_str(concat!(
        "Relay Prometheus Alertmanager webhook notifications to a WeCom group robot.\n\n",
        "USAGE:\n    weixin-robot --key-file PATH [OPTIONS]\n",
        "    weixin-robot --config FILE [OPTIONS]\n",
        "    weixin-robot COMMAND [OPTIONS]   (weixin-robot help COMMAND for its options)\n\n",
        "Alertmanager posts to http://HOST:PORT/alertinfo.\n\nCOMMANDS:\n",
    ));
    for doc in COMMANDS {
        let left = format!("    {} {}", doc.name, doc.args);
        out.push_str(&format!("{left:<40}{}\n", doc.about));
    }
    out.push_str("\nOPTIONS:\n");
    for flag in FLAGS.iter().filter(|f| Command::Serve.accepts(f)) {
        out.push_str(&help_line(flag));
    }
    out.push_str("\nRUST_LOG sets the log level (default info).\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn debug_never_shows_a_value() -> Result<(), Error> {
        let secret = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=s3cr3t-debug";
        let raw = parse_args(vec!["--key".into(), secret.into(), "--port=7000".into()], &|_| None)?;
        let shown = format!("{raw:?}");
        assert!(shown.contains("--key") && shown.contains("--port"), "{shown}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("7000"), "{shown}");
        Ok(())
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
            }
            .replace('|', "\\|");
            let env = flag.env.map_or_else(String::new, |e| format!("`{e}`"));
            let default = flag.default.map_or_else(String::new, |d| format!("`{d}`"));
            let row =
                format!("| {name} | {env} | {default} | {} |\n", flag.help.replace('|', "\\|"));
            out.push_str(&row);
        }
        out
    }

    /// Sections of the man page beyond the flags and commands, in a tiny markup: a blank
    /// line starts a paragraph, `TERM :: text` is a tagged paragraph, `- text` a bullet.
    const MAN_SECTIONS: &[(&str, &str)] = &[
        (
            "CONFIG FILE",
            "--config FILE names robots and routes notifications to them. The format is a strict \
             subset of TOML; unknown keys and mistakes stop start-up with exit status 2 and the \
             line. A commented example is /usr/share/doc/weixin-robot/config.example.toml.\n\n\
             default_robot = NAME :: the robot for notifications no route picks (needed with \
             several robots unless one is called default).\n\
             route_label = LABEL :: a group label (else common label, else the first alert's \
             label) whose value names the robot; default wecom_robot.\n\
             [robots.NAME] :: one robot: key or key_file (the webhook URL or bare key), rate \
             (N/DURATION), max_delay (DURATION, storm mode), msgtype (markdown, markdown_v2 or text), template (a file, see \
             TEMPLATES), mention_users, mention_mobiles, mention_all, mention_label and \
             mention_mobile_label (labels whose values, in firing alerts, name more people).\n\
             [[mentions]] :: label, value, users, mobiles, all, mention_label, \
             mention_mobile_label, robot: whom to @-mention when a firing alert carries \
             label=value.\n\n\
             A notification goes to the robot named in the path (POST /alertinfo/NAME), else to \
             the one named by route_label, else to default_robot. --key or KEY next to a file \
             adds a robot named default. Preview what a robot sends with \
             weixin-robot render --config FILE --robot NAME PAYLOAD.",
        ),
        (
            "TEMPLATES",
            "template = FILE in a robot's table replaces the built-in layout. The file has a \
             required [alert] section, rendered once per alert, and optional [firing_heading] and \
             [resolved_heading] sections.\n\n\
             {{labels.NAME}}, {{annotations.NAME}} :: the alert's, else the group's common ones, \
             else -; {{NAME|text}} shows text instead of -.\n\
             {{labels}}, {{annotations}} :: all of them as k=v, k=v.\n\
             {{status}}, {{starts_at}}, {{ends_at}}, {{duration}}, {{generator_url}}, \
             {{silence_url}}, {{runbook_url}}, {{fingerprint}}, {{colour}} :: the alert's \
             fields; times in --tz.\n\
             {{group_labels.NAME}}, {{common_labels.NAME}}, {{receiver}}, {{external_url}}, \
             {{tz}} :: the notification's, also in headings.\n\
             {{count}} :: in headings: the number of alerts.\n\
             {{#NAME}}...{{/NAME}}, {{^NAME}}...{{/NAME}} :: a mustache section: text kept when \
             NAME (firing, resolved or a placeholder) is present and not empty, or, inverted, \
             when it is not; at most 8 deep.\n\n\
             Values are escaped like the built-in layout's; splitting, merging and the robot's \
             msgtype apply as usual. A mistake is reported with its line when the file loads; \
             Go template syntax gets the equivalent here. \
             A complete example is /usr/share/doc/weixin-robot/template.example.txt. While \
             iterating, use render (or --dedup-window 0s, so the same test payload is not \
             answered as a duplicate).",
        ),
        (
            "SIGNALS",
            "SIGHUP :: reload --config and the key files through the same checks as start-up; \
             a bad file is refused and the old configuration stays (logged, and \
             weixin_robot_config_last_reload_successful becomes 0).\n\
             SIGTERM, SIGINT :: stop accepting (503), keep delivering for --grace, then exit 0. \
             What is left stays in the --state-dir spool, or is reported as lost without one.",
        ),
        (
            "HTTP ENDPOINTS",
            "POST /alertinfo :: an Alertmanager webhook notification: 200 queued or duplicate; \
             400 bad JSON; 401 without credentials when auth is on; 413 over --max-body; 503 \
             when the outbox is full or the relay is shutting down (Alertmanager retries).\n\
             POST /alertinfo/NAME :: the same, for robot NAME (404 when there is none).\n\
             GET /healthz, GET /-/healthy :: 200 while the process serves.\n\
             GET /-/ready :: 200, or 503 while the outbox is full or the relay is shutting down.\n\
             GET /metrics :: Prometheus metrics (weixin_robot_* and process_*).\n\
             POST /-/reload :: like SIGHUP; 500 with the reason when the files are bad.",
        ),
        (
            "ENVIRONMENT",
            "Every option above names its environment variable; the command line wins. A bad \
             value from the environment is reported with the variable's name.\n\n\
             RUST_LOG :: the log level (default info).\n\
             HTTPS_PROXY, NO_PROXY :: honoured for requests to WeCom.",
        ),
        (
            "FILES",
            "/etc/weixin-robot/ :: the key file, the --config file and the key files it names.\n\
             /etc/default/weixin-robot, /etc/sysconfig/weixin-robot :: environment of the \
             systemd service (Debian, RPM).\n\
             /var/lib/weixin-robot/ :: the outbox spool (--state-dir): queue/, failed/ (dropped \
             messages), corrupt/.\n\
             /usr/share/doc/weixin-robot/ :: README.md, config.example.toml, \
             template.example.txt.",
        ),
        (
            "EXIT STATUS",
            "0 :: clean shutdown, or the command succeeded.\n\
             1 :: runtime failure: cannot listen, spool unusable, a payload rejected by render, \
             WeCom refused send-test, the relay did not answer healthcheck.\n\
             2 :: invalid command line, environment or configuration.",
        ),
    ];

    /// Roff for [`MAN_SECTIONS`]' markup.
    fn man_markup(text: &str, esc: &dyn Fn(&str) -> String) -> String {
        let mut out = String::new();
        for (i, para) in text.split("\n\n").enumerate() {
            if i > 0 {
                out.push_str(".PP\n");
            }
            for line in para.lines() {
                match line.split_once(" :: ") {
                    Some((term, body)) => {
                        out.push_str(&format!(".TP\n.B {}\n{}\n", esc(term), esc(body)))
                    }
                    None => out.push_str(&format!("{}\n", esc(line))),
                }
            }
        }
        out
    }

    /// The man page, generated from [`FLAGS`] and [`COMMANDS`] like `--help`.
    fn man_page() -> String {
        let esc = |t: &str| t.replace('\\', "\\e").replace('-', "\\-");
        let flag_name = |flag: &Flag| {
            let mut s = String::new();
            if let Some(short) = flag.short {
                s.push_str(&format!("{}, ", esc(short)));
            }
            s.push_str(&esc(flag.long));
            if let Some(value) = flag.value {
                s.push_str(&format!(" \\fI{}\\fR", esc(value)));
            }
            s
        };
        let mut out = String::from(
            ".TH WEIXIN-ROBOT 1 \"\" \"weixin-robot\" \"User Commands\"\n\
             .SH NAME\nweixin\\-robot \\- relay Prometheus Alertmanager webhooks to WeCom group robots\n\
             .SH SYNOPSIS\n.B weixin\\-robot\n\\-\\-key\\-file \\fIPATH\\fR [\\fIOPTIONS\\fR]\n.br\n\
             .B weixin\\-robot\n\\-\\-config \\fIFILE\\fR [\\fIOPTIONS\\fR]\n",
        );
        for doc in COMMANDS {
            out.push_str(&format!(".br\n.B weixin\\-robot {}\n", esc(doc.name)));
            if !doc.args.is_empty() {
                out.push_str(&format!("\\fI{}\\fR ", esc(doc.args)));
            }
            if doc.flags.is_empty() {
                out.push('\n');
            } else {
                out.push_str("[\\fIOPTIONS\\fR]\n");
            }
        }
        out.push_str(
            ".SH DESCRIPTION\nAccepts Alertmanager webhook notifications on \\fBPOST /alertinfo\\fR and delivers them \
             to WeCom (企业微信) group robots as markdown messages, within WeCom's rate limit, \
             with retries, deduplication and an optional on\\-disk outbox.\n.SH COMMANDS\n",
        );
        for doc in COMMANDS {
            out.push_str(&format!(".TP\n.B {}", esc(doc.name)));
            if !doc.args.is_empty() {
                out.push_str(&format!(" \\fI{}\\fR", esc(doc.args)));
            }
            out.push_str(&format!("\n{}.", esc(doc.about)));
            if !doc.flags.is_empty() {
                let flags: Vec<String> = doc.flags.iter().map(|f| esc(f)).collect();
                out.push_str(&format!(" Options: {}.", flags.join(", ")));
            }
            out.push('\n');
        }
        out.push_str(".SH OPTIONS\n");
        for flag in FLAGS {
            out.push_str(&format!(".TP\n.B {}\n", flag_name(flag)));
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
        for (title, text) in MAN_SECTIONS {
            out.push_str(&format!(".SH {title}\n"));
            out.push_str(&man_markup(text, &esc));
        }
        out.push_str(".SH SEE ALSO\n/usr/share/doc/weixin\\-robot/README.md\n");
        out
    }

    #[test]
    fn man_page_has_every_section_and_command() {
        let man = man_page();
        for section in [
            "SYNOPSIS",
            "COMMANDS",
            "OPTIONS",
            "CONFIG FILE",
            "TEMPLATES",
            "SIGNALS",
            "HTTP ENDPOINTS",
            "FILES",
            "EXIT STATUS",
        ] {
            assert!(man.contains(&format!("\n.SH {section}\n")), "{section}");
        }
        let synopsis =
            &man[man.find(".SH SYNOPSIS").unwrap_or(0)..man.find(".SH DESCRIPTION").unwrap_or(0)];
        for doc in COMMANDS {
            assert!(
                synopsis.contains(&format!(".B weixin\\-robot {}\n", doc.name.replace('-', "\\-"))),
                "{}",
                doc.name
            );
        }
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

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<RawArgs, Error> {
        let env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_args(args.iter().map(Into::into).collect(), &move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn value_forms_and_sources() -> Result<(), Error> {
        let raw = parse(&["--tz=-05:30", "-p6001", "--listen", "::1", "-k=abc"], &[])?;
        assert_eq!(raw.get("--tz"), Some("-05:30"));
        assert_eq!(raw.get("--port"), Some("6001"));
        assert_eq!(raw.get("--listen"), Some("::1"));
        assert_eq!(raw.get("--key"), Some("abc"));
        let raw = parse(&["--tz", "-05:30"], &[("PORT", "7"), ("WEIXIN_ROBOT_TZ", "Z")])?;
        assert_eq!(
            (raw.get("--tz"), raw.source("--tz")),
            (Some("-05:30"), Some(Source::CommandLine))
        );
        assert_eq!(
            (raw.get("--port"), raw.source("--port")),
            (Some("7"), Some(Source::Env("PORT")))
        );
        let raw = parse(&["render", "--", "-"], &[])?;
        assert_eq!(raw.command, Command::Render(None));
        let raw = parse(&["render", "--", "-file.json"], &[])?;
        assert_eq!(raw.command, Command::Render(Some(PathBuf::from("-file.json"))));
        let raw = parse(&["render", "a.json", "--digest", "b.json", "-"], &[])?;
        let files = ["a.json", "b.json", "-"].map(PathBuf::from).to_vec();
        assert_eq!(raw.command, Command::RenderDigest(files));
        assert!(parse(&["--digest", "-k", "x"], &[]).is_err(), "serving takes no --digest");
        // Flags a command does not take are not read from the environment either.
        let raw = parse(&["healthcheck"], &[("KEY", "x"), ("PORT", "9")])?;
        assert_eq!((raw.get("--key"), raw.get("--port")), (None, Some("9")));
        let bad = std::ffi::OsString::from_vec(vec![0xff]);
        let err = parse_args(vec![bad], &|_| None).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(err, Err("an argument is not valid UTF-8".to_string()));
        Ok(())
    }

    #[test]
    fn help_lists_every_flag() {
        let mut all = help_text(None);
        for doc in COMMANDS {
            all.push_str(&help_text(Some(doc.name)));
        }
        for flag in FLAGS {
            assert!(all.contains(flag.long), "{}", flag.long);
        }
        let render = help_text(Some("render"));
        assert!(render.contains("--robot") && !render.contains("--state-dir"), "{render}");
    }
}
