//! Checked settings: [`RawArgs`] from [`crate::cli`] → the [`Config`] the program runs on.
//!
//! The webhook key is a secret: it lives only inside [`WebhookUrl`], whose `Debug` and `Display`
//! print `key=***`, and no error message here ever includes the value the user passed for it.
//!
//! This module knows nothing of HTTP serving, JSON payloads or threads.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{invalid, Command, Error, RawArgs};
use crate::config_file;
use crate::logger::LogFormat;
use crate::robots::{read_key_file, robots, Keys, RobotConfig};
use crate::time::TzOffset;
use crate::values::{parse_bytes, parse_duration, Rate};
use crate::wecom::WebhookUrl;

/// The checked settings the program runs on.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// The single robot given by --key/--key-file (the one named `default`), if any.
    #[cfg_attr(not(test), allow(dead_code))]
    pub webhook: Option<WebhookUrl>,
    /// Every robot, from --key and from --config; never empty when serving.
    pub robots: Vec<RobotConfig>,
    /// The robot that gets what no route picks.
    pub default_robot: String,
    /// `--robot`: the robot `render` and `send-test` use instead of the default one.
    pub robot: Option<String>,
    pub log_format: LogFormat,
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
    /// `--max-delay`: storm mode's bound for the `default` robot and robots made for `?key=`.
    pub max_delay: Duration,
    pub allow_key_param: bool,
    pub dedup_window: Duration,
    pub state_dir: Option<PathBuf>,
    pub grace: Duration,
    pub queue_max_messages: usize,
    pub queue_max_bytes: u64,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_body_bytes: u64,
    /// `--max-alerts`: more alerts in one notification → 413.
    pub max_alerts: usize,
    pub max_header_bytes: u64,
    /// `--max-headers`: headers a request may carry (1 ..= `HEADER_CAPACITY`).
    pub max_headers: usize,
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub max_unsent_bytes: u64,
    pub max_body_in_flight: u64,
    pub dedup_max_entries: usize,
    /// `--max-key-robots`: `?key=` robots alive at once.
    pub max_key_robots: usize,
    /// `--key-param-host`: checked when a `?key=` arrives (`crate::key_param`).
    pub key_param_host: String,
    pub auth_token_file: Option<PathBuf>,
    pub basic_auth_file: Option<PathBuf>,
}

impl Config {
    /// Checks everything; an error about a value from the environment names the variable.
    pub fn from_raw(raw: &RawArgs) -> Result<Config, Error> {
        Config::check(raw).map_err(|e| raw.locate(e))
    }

    fn check(raw: &RawArgs) -> Result<Config, Error> {
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
        let on_cli = |f: &str| raw.on_command_line(f);
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
            // With --config the key file is optional: the packaged unit always passes
            // /etc/weixin-robot/key, which stays comment-only (or absent) when the robots
            // come from the config file; then there is no `default` robot.
            (None, Some(path)) if raw.get("--config").is_some() => {
                let path = PathBuf::from(path);
                match read_key_file(&path) {
                    Ok(key) if key.is_empty() => None,
                    Ok(key) => Some(key),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(source) => return Err(Error::KeyFile { path, source }),
                }
            }
            (None, Some(path)) => {
                let path = PathBuf::from(path);
                Some(read_key_file(&path).map_err(|source| Error::KeyFile { path, source })?)
            }
            (None, None)
                if raw.dry_run
                    || raw.get("--config").is_some()
                    || matches!(
                        raw.command,
                        Command::Render(_) | Command::RenderDigest(_) | Command::Healthcheck
                    ) =>
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
        let max_alerts = count("--max-alerts")?;
        let max_header_bytes = bytes("--max-header-bytes")?;
        let max_headers = count("--max-headers")?;
        if !(1..=may_minihttp::HEADER_CAPACITY).contains(&max_headers) {
            return Err(invalid(
                "--max-headers",
                format!("must be 1 to {}", may_minihttp::HEADER_CAPACITY),
            ));
        }
        if max_body_bytes == 0 || max_header_bytes == 0 {
            return Err(invalid("--max-body", "sizes must be above zero"));
        }
        let request_timeout = duration("--request-timeout")?;
        if request_timeout.is_zero() {
            return Err(invalid("--request-timeout", "must be above zero"));
        }
        let max_unsent_bytes = bytes("--max-unsent-bytes")?;
        let max_body_in_flight = bytes("--max-body-in-flight")?;
        if max_unsent_bytes == 0 || max_body_in_flight == 0 {
            return Err(invalid("--max-body-in-flight", "sizes must be above zero"));
        }
        let dedup_max_entries = count("--dedup-max-entries")?;
        let max_key_robots = count("--max-key-robots")?;
        if max_key_robots == 0 {
            return Err(invalid("--max-key-robots", "must be above zero"));
        }
        let key_param_host = raw.get_or_default("--key-param-host").unwrap_or("").to_string();
        crate::key_param::KeyParamHost::parse(&key_param_host)
            .map_err(|r| invalid("--key-param-host", r))?;

        let keys = match raw.command {
            Command::Render(_) | Command::RenderDigest(_) | Command::Healthcheck => Keys::Skip,
            _ if raw.dry_run => Keys::Optional,
            _ => Keys::Required,
        };
        let rate = Rate::parse(raw.get_or_default("--rate").unwrap_or("20/60s"))
            .map_err(|r| invalid("--rate", r))?;
        let max_delay = duration("--max-delay")?;
        if max_delay.is_zero() {
            return Err(invalid("--max-delay", "must be above zero"));
        }
        let (robots, default_robot, route_label, mention_rules) =
            robots(raw.get("--config").map(Path::new), webhook.as_ref(), rate, max_delay, keys)?;
        let robot = match raw.get("--robot") {
            Some(name) if robots.iter().any(|r| r.name == name) => Some(name.to_string()),
            Some(_) => {
                let names: Vec<&str> = robots.iter().map(|r| r.name.as_str()).collect();
                return Err(invalid(
                    "--robot",
                    format!("no such robot (robots: {})", names.join(", ")),
                ));
            }
            None => None,
        };
        let log_format = LogFormat::parse(raw.get_or_default("--log-format").unwrap_or("text"))
            .map_err(|r| invalid("--log-format", r))?;
        Ok(Config {
            listen: SocketAddr::new(ip, port),
            webhook,
            robots,
            default_robot,
            robot,
            log_format,
            route_label,
            mention_rules,
            dry_run: raw.dry_run,
            tz: TzOffset::parse(raw.get_or_default("--tz").unwrap_or("+08:00"))
                .map_err(|r| invalid("--tz", r))?,
            ca_file: raw.get("--ca-file").map(PathBuf::from),
            send_timeout,
            rate,
            max_delay,
            allow_key_param: raw.allow_key_param,
            dedup_window: duration("--dedup-window")?,
            state_dir: raw.get("--state-dir").map(PathBuf::from),
            grace: duration("--grace")?,
            queue_max_messages,
            queue_max_bytes,
            retry_initial,
            retry_max,
            max_body_bytes,
            max_alerts,
            max_header_bytes,
            max_headers,
            max_connections,
            request_timeout,
            max_unsent_bytes,
            max_body_in_flight,
            dedup_max_entries,
            max_key_robots,
            key_param_host,
            auth_token_file: raw.get("--auth-token-file").map(PathBuf::from),
            basic_auth_file: raw.get("--basic-auth-file").map(PathBuf::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse_args;
    use crate::wecom::WECOM_SEND_URL;

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

    /// The packaged unit always passes /etc/weixin-robot/key; with --config that file may be
    /// comment-only or gone, and then the robots come from the config alone.
    #[test]
    fn key_file_is_optional_with_config() -> Result<(), Error> {
        let dir = std::env::temp_dir().join(format!("wxr-optkey-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let (key, conf) = (dir.join("key"), dir.join("config.toml"));
        let _ = std::fs::write(&key, "# Put the webhook URL below\n\n");
        let _ = std::fs::write(&conf, "[robots.ops]\nkey = \"OPSKEY\"\n");
        let (k, c) = (key.to_str().unwrap_or_default(), conf.to_str().unwrap_or_default());
        let names = |cfg: &Config| cfg.robots.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        let cfg = config(&["--key-file", k, "--config", c], &[])?;
        assert_eq!(names(&cfg), ["ops"]);
        assert!(cfg.webhook.is_none());
        let missing = dir.join("absent").to_string_lossy().into_owned();
        let cfg = config(&["--key-file", &missing], &[("WEIXIN_ROBOT_CONFIG", c)])?;
        assert_eq!(names(&cfg), ["ops"]);
        // Without --config the key file is still required and must hold a key.
        let err = config(&["--key-file", k], &[]).expect_err("comment-only key").to_string();
        assert!(err.contains("--key-file"), "{err}");
        assert!(config(&["--key-file", &missing], &[]).is_err());
        // A key there still makes the robot named default, as --key does with --config.
        let _ = std::fs::write(&key, "DEFKEY\n");
        assert_eq!(names(&config(&["--key-file", k, "--config", c], &[])?), ["default", "ops"]);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// Under systemd the service user reads the key files, not the root who wrote them.
    #[test]
    fn unreadable_key_file_error_names_the_user_that_must_read_it() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let err = Error::KeyFile { path: "/etc/weixin-robot/key".into(), source: denied };
        let text = err.to_string();
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        assert!(text.contains("runs as user "), "{text}");
        assert!(text.contains(&format!("uid {uid}")), "{text}");
        assert!(text.contains("group weixin-robot, mode 0640"), "{text}");
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let err = Error::KeyFile { path: "/x".into(), source: missing };
        assert!(!err.to_string().contains("runs as user"), "{err}");
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
}
