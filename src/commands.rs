//! The helper commands: `render` (try a layout without sending) and `send-test` (check the
//! key and the network path to WeCom). Both print for a human and return what `main` turns
//! into an exit code.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::alertmanager::{self, Payload, Status};
use crate::compact;
use crate::config::Config;
use crate::config_file::MentionEntry;
use crate::digest;
use crate::intake;
use crate::outbox::split::{cut_utf8, split};
use crate::render;
use crate::robots::RobotConfig;
use crate::sort;
use crate::time::TzOffset;
use crate::time::{format_time, Timestamp};
use crate::wecom::{self, SendError};

/// Prints each message a payload becomes, exactly as the robot would send it: its template,
/// message type, split and @-mention message. The robot is `--robot`, else the one routing
/// picks from the payload's labels (`--config`), else `default`. Reads `path`, or stdin when
/// `None`; at most `--max-body` bytes. Keys are never read.
pub fn render(config: &Config, path: Option<&Path>) -> Result<(), String> {
    let payload = read_payload(config, path)?;
    let rc = chosen_or_routed(config, &payload)?;
    eprintln!(
        "robot {}: msgtype {:?}, template {}",
        rc.name,
        rc.msgtype,
        if rc.template.is_some() { "from the config file" } else { "built-in" }
    );
    let parts = messages_for(&payload, config.tz, rc, &mentions(config, rc, &payload));
    for (i, part) in parts.iter().enumerate() {
        println!("----- message {}/{} ({} bytes) -----", i + 1, parts.len(), part.len());
        println!("{part}");
    }
    Ok(())
}

/// Previews storm mode for one or more payloads (`-`, or no file: stdin), as one robot's
/// pending state: the layout its budget within `max_delay` picks, then the digest message, the
/// attached file and the compact messages (what is sent instead when the upload fails).
/// Nothing is sent and keys are never read. The relay's sender makes the same choice with its
/// limiter's recent sends.
pub fn render_digest(config: &Config, paths: &[PathBuf]) -> Result<(), String> {
    let mut groups = Vec::new();
    if paths.is_empty() {
        groups.push(read_payload(config, None)?);
    }
    for p in paths {
        groups.push(read_payload(config, Some(p.as_path()).filter(|p| p.as_os_str() != "-"))?);
    }
    let rc = chosen_or_routed(config, &groups[0])?;
    let (tz, limit) = (config.tz, rc.msgtype.limit());
    let full = packed_count(
        groups.iter().map(|p| {
            let mention = mentions(config, rc, p);
            let all = messages_for(p, tz, rc, &mention);
            let mentioned = mention.all || !mention.users.is_empty() || !mention.mobiles.is_empty();
            (all.len() - usize::from(mentioned), all, mentioned)
        }),
        limit,
    );
    let compact = split(
        &render::adapt(compact::compact(&groups, tz, limit, rc.template.as_deref()), rc.msgtype),
        limit,
    );
    // As from an idle robot: the relay subtracts what its limiter has already spent.
    let budget = digest::capacity(rc.rate, &[], rc.max_delay);
    let layout = match digest::choose(full, compact.len(), budget) {
        digest::Layout::Full => "full",
        digest::Layout::Compact => "compact",
        digest::Layout::Digest => "digest + file",
    };
    let alerts: usize = groups.iter().map(|g| g.alerts.len()).sum();
    eprintln!(
        "robot {}: {}/{:?}, max-delay {:?}: at most {budget} messages within it",
        rc.name, rc.rate.messages, rc.rate.window, rc.max_delay
    );
    eprintln!(
        "{alerts} alerts in {} groups: full layout {full} messages (packed as a backlog), \
         compact {}, digest 2 -> {layout}",
        groups.len(),
        compact.len()
    );
    let now = now();
    let name = digest::file_name(now, tz);
    let message =
        render::adapt(digest::digest(&groups, tz, &name, limit), rc.msgtype).to_markdown();
    println!("----- digest message ({} bytes) -----", message.len());
    println!("{message}");
    let file = digest::full_list(&groups, tz, now, wecom::MEDIA_MAX_BYTES);
    println!("----- file {name} ({} bytes) -----", file.len());
    print!("{file}");
    for (i, part) in compact.iter().enumerate() {
        println!("----- compact message {}/{} ({} bytes) -----", i + 1, compact.len(), part.len());
        println!("{part}");
    }
    Ok(())
}

fn now() -> Timestamp {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Timestamp { unix_seconds: now as i64, nanos: 0 }
}

/// `--robot`, else the robot routing picks for this payload.
fn chosen_or_routed<'a>(config: &'a Config, payload: &Payload) -> Result<&'a RobotConfig, String> {
    match &config.robot {
        Some(name) => config
            .robots
            .iter()
            .find(|r| &r.name == name)
            .ok_or_else(|| format!("no robot named {name:?}")),
        None => Ok(routed(config, payload)),
    }
}

/// Reads one payload (stdin when `path` is `None`), at most `--max-body` bytes, through the
/// same checks the relay applies.
fn read_payload(config: &Config, path: Option<&Path>) -> Result<Payload, String> {
    let mut body = Vec::new();
    let limit = config.max_body_bytes;
    let read = match path {
        Some(p) => std::fs::File::open(p)
            .and_then(|f| f.take(limit + 1).read_to_end(&mut body))
            .map_err(|e| format!("reading {}: {e}", p.display())),
        None => std::io::stdin()
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading stdin: {e}")),
    };
    read?;
    if body.len() as u64 > limit {
        return Err(format!("payload is larger than --max-body ({limit} bytes)"));
    }
    let shown = path.map_or_else(|| "stdin".into(), |p| p.display().to_string());
    // The same checks the relay applies (JSON depth, then the payload itself).
    intake::prepare(&body, config.tz).map_err(|e| format!("{shown}: payload rejected: {e}"))?;
    alertmanager::parse(&body).map_err(|e| format!("{shown}: payload rejected: {e}"))
}

// The functions below restate, for one payload and no queue, what the relay does when it
// routes and renders (`routing::Robots::pick`, the outbox's message composition); mentions
// call the relay's own pure `routing::mentions`. They are kept apart from the relay's on
// purpose: render needs no outbox, sender or key. `tests/it/operability.rs` runs the relay and render on the same
// payload and config and requires identical messages, so the two cannot drift apart unseen.

/// The robot routing picks: the one named by the routing label in the group labels, the
/// common labels or the first alert, else the default robot.
fn routed<'a>(config: &'a Config, payload: &Payload) -> &'a RobotConfig {
    let label = config.route_label.as_str();
    let value = payload
        .group_labels
        .get(label)
        .or_else(|| payload.common_labels.get(label))
        .or_else(|| payload.alerts.first().and_then(|a| a.labels.get(label)));
    let named = |name: &str| config.robots.iter().find(|r| r.name == name);
    value.and_then(named).or_else(|| named(&config.default_robot)).unwrap_or(&config.robots[0])
}

/// Who is @-mentioned: the relay's own rule (lists, `[[mentions]]`, `mention_label`), for
/// notifications with a firing alert only.
fn mentions(config: &Config, rc: &RobotConfig, payload: &Payload) -> MentionEntry {
    crate::routing::mentions(&rc.mention, &rc.name, &config.mention_rules, payload)
}

/// The messages: the robot's layout in its message type, split at its size limit, then the
/// @-mention `text` message shown as the JSON body it is posted as.
fn messages_for(
    payload: &Payload,
    tz: TzOffset,
    rc: &RobotConfig,
    mention: &MentionEntry,
) -> Vec<String> {
    let doc = match &rc.template {
        Some(t) => t.render(payload, tz),
        None => render::render(payload, tz),
    };
    let mut parts = split(&render::adapt(doc, rc.msgtype), rc.msgtype.limit());
    if mention.all || !mention.users.is_empty() || !mention.mobiles.is_empty() {
        let mut names: Vec<&str> = payload
            .alerts
            .iter()
            .filter(|a| a.status == Status::Firing)
            .filter_map(|a| {
                a.labels.get("alertname").or_else(|| payload.common_labels.get("alertname"))
            })
            .collect();
        sort::sort(&mut names);
        names.dedup();
        let firing = payload.alerts.iter().filter(|a| a.status == Status::Firing).count();
        let text = format!("【告警通知】{firing} 条告警待处理: {}", names.join(", "));
        let content = cut_utf8(&text, wecom::TEXT_MAX_BYTES);
        parts.push(wecom::text_body(content, &mention.users, &mention.mobiles, mention.all));
    }
    parts
}

/// How many messages the full layout takes for a backlog, packed as the relay packs one: a
/// group that fits one message shares it with the next such groups while they fit (joined by
/// a blank line); a longer group takes its parts; each @-mention is one more message.
fn packed_count(groups: impl Iterator<Item = (usize, Vec<String>, bool)>, limit: usize) -> usize {
    let (mut count, mut open) = (0, None::<usize>);
    for (contents, parts, mentioned) in groups {
        match (contents, parts.first(), open) {
            (1, Some(part), Some(bytes)) if bytes + 2 + part.len() <= limit => {
                open = Some(bytes + 2 + part.len())
            }
            (1, Some(part), _) => {
                count += usize::from(open.is_some());
                open = Some(part.len());
            }
            _ => {
                count += usize::from(open.take().is_some()) + contents;
            }
        }
        count += usize::from(mentioned);
    }
    count + usize::from(open.is_some())
}

/// The robot `send-test` and `render` use: `--robot`, else the default one.
fn chosen_robot(config: &Config) -> Result<&RobotConfig, String> {
    let name = config.robot.as_deref().unwrap_or(&config.default_robot);
    config.robots.iter().find(|r| r.name == name).ok_or_else(|| format!("no robot named {name:?}"))
}

/// Sends one short markdown message and prints WeCom's answer with a hint for known errcodes.
/// With `with_file`, then uploads a small file and sends it as a `file` message: the path
/// storm mode's attached list takes.
pub fn send_test(config: &Config, with_file: bool) -> Result<(), String> {
    let robot = chosen_robot(config)?;
    let url = robot
        .webhook
        .as_ref()
        .ok_or("send-test needs a key: --key, --key-file, or --config with --robot")?;
    let client = wecom::Client::new(config.send_timeout, config.ca_file.as_deref())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let when = format_time(Timestamp { unix_seconds: now as i64, nanos: 0 }, config.tz);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let content = format!(
        "## <font color=\"info\">weixin-robot 测试消息</font>\n> 发送时间: {when}\n> 主机: {}\n> 版本: {}",
        crate::render::escape(host.trim()),
        crate::build::VERSION
    );
    println!("sending a test message to {url} (robot {})", robot.name);
    let (result, latency) = client.send(url, &wecom::markdown_body(&content));
    report(result, latency)?;
    if !with_file {
        return Ok(());
    }
    let file = format!("# weixin-robot 测试文件\n\n发送时间: {when}\n\n| 状态 | 告警名称 |\n|---|---|\n| 告警中 | Test |\n");
    let name = "weixin-robot-test.md";
    let upload = url.upload_url().map(|u| u.to_string()).unwrap_or_default();
    println!("uploading {name} ({} bytes) to {upload}", file.len());
    let (result, latency) = client.upload_media(url, name, file.as_bytes());
    let media_id = report(result, latency)?;
    println!("sending it as a file message");
    let (result, latency) = client.send(url, &wecom::file_body(&media_id));
    report(result, latency)
}

/// Prints how a step went, with a pointer to WeCom's errcode list for codes without a hint.
fn report<T>(result: Result<T, SendError>, latency: std::time::Duration) -> Result<T, String> {
    match result {
        Ok(v) => {
            println!("ok: WeCom answered errcode 0 in {} ms", latency.as_millis());
            Ok(v)
        }
        Err(e) => {
            println!("failed after {} ms: {e}", latency.as_millis());
            if let SendError::Api { errcode, .. } = &e {
                if wecom::hint(*errcode).is_none() {
                    println!("see https://developer.work.weixin.qq.com/document/path/90313 for errcode {errcode}");
                }
            }
            Err(format!("send-test failed ({})", e.class().as_str()))
        }
    }
}

/// Asks the relay this configuration describes for `/healthz`; Ok when it answers 200.
/// Used as the container health check, where there is no shell or curl.
pub fn healthcheck(config: &Config) -> Result<(), String> {
    use std::io::Write;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    use std::time::Duration;

    let ip = match config.listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, config.listen.port());
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("healthcheck: connecting to {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("healthcheck: {e}"))?;
    let mut answer = [0u8; 32];
    let n = stream.read(&mut answer).map_err(|e| format!("healthcheck: reading: {e}"))?;
    let status_line = String::from_utf8_lossy(&answer[..n]);
    if status_line.starts_with("HTTP/1.1 200") {
        println!("ok: {addr} answered /healthz");
        Ok(())
    } else {
        Err(format!("healthcheck: {addr} answered {:?}", status_line.lines().next().unwrap_or("")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_layout_is_counted_packed() {
        let one = |bytes: usize, mentioned: bool| (1, vec!["x".repeat(bytes)], mentioned);
        // Three 1,000-byte groups share a message; the fourth opens the next.
        let groups = vec![one(1000, false), one(1000, false), one(1000, false), one(1500, false)];
        assert_eq!(packed_count(groups.into_iter(), 3100), 2);
        // A split group takes its parts and closes the open message; a mention is one more.
        let split_group = (3, vec![String::new(); 3], false);
        let groups = vec![one(10, false), split_group, one(10, true), one(10, false)];
        assert_eq!(packed_count(groups.into_iter(), 4096), 1 + 3 + 1 + 1);
        assert_eq!(packed_count(std::iter::empty(), 4096), 0);
    }
}
