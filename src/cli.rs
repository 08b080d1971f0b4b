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
    pub fn get(&self, long: &str) -> Option<&str> {
        self.values.iter().find(|(name, _)| *name == long).map(|(_, v)| v.as_str())
    }

    /// Value of a flag or its documented default.
    pub fn get_or_default(&self, long: &str) -> Option<&str> {
        self.get(long).or_else(|| find_flag(long).and_then(|f| f.default))
    }

    /// Whether the flag was given on the command line (not through the environment).
    pub fn on_command_line(&self, long: &str) -> bool {
        self.from_command_line.contains(&long)
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

pub fn invalid(flag: &'static str, reason: impl Into<String>) -> Error {
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

#[cfg(test)]
mod tests {
    use super::*;

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
