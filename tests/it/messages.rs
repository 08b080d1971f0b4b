//! What people read (issue #17): the built-in layout from the real binary (`render` and a
//! relay delivering to the fake WeCom), templates with sections, defaults and Go-template
//! errors, mentions taken from alert labels, and the two READMEs kept in step.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::util::*;

fn manifest(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path).to_str().expect("utf8 path").to_string()
}

/// The messages `weixin-robot render` prints for a payload file, without the separator lines.
fn render(args: &[&str]) -> Vec<String> {
    let mut all = vec!["render"];
    all.extend_from_slice(args);
    let (code, out, err) = run_to_exit(&all, &[]);
    assert_eq!(code, Some(0), "render {args:?} failed: {err}");
    let mut parts: Vec<String> = Vec::new();
    for line in out.lines() {
        if line.starts_with("----- message ") {
            parts.push(String::new());
        } else if let Some(part) = parts.last_mut() {
            if !part.is_empty() {
                part.push('\n');
            }
            part.push_str(line);
        }
    }
    parts
}

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    path.to_str().expect("utf8").to_string()
}

/// The binary prints exactly the reviewed golden files for the Kubernetes and blackbox cases.
#[test]
fn render_prints_the_golden_kubernetes_and_blackbox_messages() {
    for case in ["kube_prometheus", "blackbox", "mixed", "readme_firing", "readme_resolved"] {
        let got = render(&[&manifest(&format!("tests/golden/{case}.json"))]).join("\n\n");
        let want =
            std::fs::read_to_string(manifest(&format!("tests/golden/{case}.md"))).expect("golden");
        assert_eq!(got, want.trim_end(), "{case}");
    }
}

/// A kube-prometheus alert shows the workload, not only the exporter's scrape address; the
/// resolved one says how long it lasted; firing alerts link to a silence and the runbook.
#[test]
fn kubernetes_alert_shows_workload_duration_and_links() {
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let body = std::fs::read(manifest("tests/golden/kube_prometheus.json")).expect("payload");
    assert_eq!(relay.post(&body).status, 200);
    wait_until(Duration::from_secs(10), "delivery", || fake.delivered().len() == 1);
    let content = fake.delivered()[0].content().to_string();
    for want in [
        "> 故障实例: 10.244.1.17:8080\n> 名称空间: shop\n> Pod: api-7d9f8c6b5-x2k4q\n> 容器: api\n> 采集任务: kube-state-metrics",
        "> 节点: worker-2",
        "> 恢复时间: 2024-05-01 20:05:00\n> 持续时间: 1小时5分",
        "[静默此告警](http://alertmanager.monitoring.svc:9093/#/silences/new?filter=%7Balertname%3D%22KubePodCrashLooping%22%2Ccontainer%3D%22api%22%2C",
        "[处理手册](https://runbooks.prometheus-operator.dev/runbooks/kubernetes/kubepodcrashlooping)",
    ] {
        assert!(content.contains(want), "missing {want:?} in:\n{content}");
    }
    // One silence link: the resolved alert needs none.
    assert_eq!(content.matches("/#/silences/new").count(), 1, "{content}");
}

/// `--tz` other than +08:00 is written next to each time; +08:00 is not.
#[test]
fn tz_is_shown_when_it_is_not_the_usual_one() {
    let file = manifest("tests/golden/resolved.json");
    let utc5 = render(&["--tz", "-05:00", &file]).join("\n");
    assert!(utc5.contains("> 告警时间: 2024-05-01 07:00:00 (UTC-05:00)"), "{utc5}");
    assert!(utc5.contains("> 恢复时间: 2024-05-01 07:30:05 (UTC-05:00)"), "{utc5}");
    let cst = render(&["--tz", "+08:00", &file]).join("\n");
    assert!(cst.contains("> 告警时间: 2024-05-01 20:00:00\n") && !cst.contains("(UTC"), "{cst}");
}

/// Links are http(s) only: a hostile externalURL, runbook_url or generatorURL gives no link.
#[test]
fn only_http_links_are_rendered() {
    let dir = TempDir::new("links");
    let body = json!({
        "status": "firing", "externalURL": "javascript:alert(1)",
        "alerts": [{"status": "firing", "labels": {"alertname": "L", "instance": "h"},
                    "annotations": {"runbook_url": "javascript:alert(2)"},
                    "generatorURL": "file:///etc/passwd", "startsAt": "2024-05-01T12:00:00Z"}]
    });
    let path = write(&dir, "links.json", &body.to_string());
    let got = render(&[&path]).join("\n");
    assert!(!got.contains("](") && !got.contains("javascript") && !got.contains("file:"), "{got}");
    // The same with http(s) URLs gives all three links on one line.
    let body = body
        .to_string()
        .replace("javascript:alert(1)", "https://am.example")
        .replace("javascript:alert(2)", "https://wiki.example/r")
        .replace("file:///etc/passwd", "http://prom.example/g");
    let path = write(&dir, "links2.json", &body);
    let got = render(&[&path]).join("\n");
    assert!(
        got.contains(
            "\n> [查看详情](http://prom.example/g) · [静默此告警](https://am.example/#/silences/new?filter=%7Balertname%3D%22L%22%2Cinstance%3D%22h%22%7D) · [处理手册](https://wiki.example/r)"
        ),
        "{got}"
    );
}

const TEMPLATE: &str = "[firing_heading]
## 🔥 {{count}} 条告警 · {{receiver}}{{#group_labels.namespace}} · {{group_labels.namespace}}{{/group_labels.namespace}} · {{common_labels.cluster}} {{common_labels.team|no team}} {{external_url}} {{tz}}
[alert]
**{{labels.alertname}}**
{{#labels.pod}}
> Pod: {{labels.namespace}}/{{labels.pod}}
{{/labels.pod}}
{{^labels.pod}}
> 实例: {{labels.instance}}
{{/labels.pod}}
> 负责人: {{labels.team|无人认领}}{{#resolved}} · 持续 {{duration}}{{/resolved}}
> 标签: {{labels}}
> 注解: {{annotations}}
> [静默]({{silence_url}}) · [手册]({{runbook_url}})
";

/// A template with value sections, inverted sections and defaults, delivered by the relay.
#[test]
fn template_sections_defaults_and_new_placeholders() {
    let fake = FakeWeCom::start();
    let dir = TempDir::new("msg-template");
    let tpl = write(&dir, "t.tpl", TEMPLATE);
    let config = write(
        &dir,
        "config.toml",
        &format!("[robots.ops]\nkey = \"{}\"\ntemplate = \"{tpl}\"\n", fake.url()),
    );
    let relay = Relay::start(&["--config", &config]);
    let body = json!({
        "status": "firing", "receiver": "wecom-k8s", "groupKey": "g",
        "groupLabels": {"namespace": "shop"}, "externalURL": "http://am:9093",
        "commonLabels": {"cluster": "prod"},
        "alerts": [
            {"status": "firing", "labels": {"alertname": "CrashLoop", "namespace": "shop", "pod": "api-1"},
             "annotations": {"runbook_url": "https://wiki/crash"}, "startsAt": "2024-05-01T12:00:00Z"},
            {"status": "firing", "labels": {"alertname": "Down", "instance": "h:9100", "team": "db"},
             "startsAt": "2024-05-01T12:00:00Z"}
        ]
    });
    assert_eq!(relay.post(body.to_string().as_bytes()).status, 200);
    wait_until(Duration::from_secs(10), "templated message", || fake.delivered().len() == 1);
    assert_eq!(
        fake.delivered()[0].content(),
        "## 🔥 2 条告警 · wecom-k8s · shop · prod no team http://am:9093 +08:00\n\n\
         **CrashLoop**\n> Pod: shop/api-1\n> 负责人: 无人认领\n> 标签: alertname=CrashLoop, namespace=shop, pod=api-1\n> 注解: runbook_url=https://wiki/crash\n\
         > [静默](http://am:9093/#/silences/new?filter=%7Balertname%3D%22CrashLoop%22%2Cnamespace%3D%22shop%22%2Cpod%3D%22api-1%22%7D) · [手册](https://wiki/crash)\n\n\
         **Down**\n> 实例: h:9100\n> 负责人: db\n> 标签: alertname=Down, instance=h:9100, team=db\n> 注解: -\n\
         > [静默](http://am:9093/#/silences/new?filter=%7Balertname%3D%22Down%22%2Cinstance%3D%22h%3A9100%22%2Cteam%3D%22db%22%7D) · [手册](-)"
    );
}

/// Go templates, misspelled sections and runaway nesting stop start-up with exit 2 and a
/// message that says what to write instead.
#[test]
fn template_mistakes_are_explained_at_start_up() {
    let dir = TempDir::new("msg-template-errors");
    for (text, want) in [
        (
            "[alert]\n**{{ .Labels.alertname }}**\n",
            "line 2: {{ .Labels.alertname }}: this is not a Go template (Alertmanager's syntax); here write {{labels.alertname}}",
        ),
        (
            "[alert]\n{{ if .Labels.pod }}pod{{ end }}\n",
            "here write {{#labels.pod}}…{{/labels.pod}}",
        ),
        ("[alert]\n{{ range .Alerts }}x\n", "the [alert] section is rendered once per alert"),
        ("[alert]\n{{ .Labels.job | toUpper }}\n", "there are no functions or filters"),
        ("[alerts]\n{{labels.alertname}}\n", "line 1: unknown section [alerts]; did you mean [alert]?"),
        (&format!("[alert]\n{}x{}", "{{#firing}}".repeat(9), "{{/firing}}".repeat(9)), "nest deeper than 8"),
    ] {
        let tpl = write(&dir, "bad.tpl", text);
        let config = write(
            &dir,
            "config.toml",
            &format!("[robots.ops]\nkey = \"http://127.0.0.1:9/send?key=k\"\ntemplate = \"{tpl}\"\n"),
        );
        let (code, _, err) = run_to_exit(&["--config", &config], &[]);
        assert_eq!(code, Some(2), "{text}: {err}");
        assert!(err.contains(want) && err.lines().count() == 1, "{text}:\n{err}");
    }
}

/// The shipped example template renders a Kubernetes payload sensibly.
#[test]
fn the_example_template_renders_kubernetes_alerts() {
    let fake = FakeWeCom::start();
    let dir = TempDir::new("msg-example");
    let config = write(
        &dir,
        "config.toml",
        &format!(
            "[robots.ops]\nkey = \"{}\"\ntemplate = \"{}\"\n",
            fake.url(),
            manifest("packaging/template.example.txt")
        ),
    );
    let relay = Relay::start(&["--config", &config]);
    let body = std::fs::read(manifest("tests/golden/kube_prometheus.json")).expect("payload");
    assert_eq!(relay.post(&body).status, 200);
    wait_until(Duration::from_secs(10), "delivery", || fake.delivered().len() == 1);
    let content = fake.delivered()[0].content().to_string();
    for want in [
        "## <font color=\"warning\">🔥 1 条告警</font>\n\n**KubePodCrashLooping** · <font color=\"warning\">warning</font>\n> 实例: 10.244.1.17:8080\n> 位置: shop/api-7d9f8c6b5-x2k4q (api)\n> 负责人: 无人认领\n> 开始: 2024-05-01 20:03:10\n> Pod 反复崩溃重启\n> [图表](http://prometheus-k8s",
        " · [静默](http://alertmanager.monitoring.svc:9093/#/silences/new?filter=",
        " · [处理手册](https://runbooks.prometheus-operator.dev/runbooks/kubernetes/kubepodcrashlooping)",
        "> 开始: 2024-05-01 19:00:00 · 恢复: 2024-05-01 20:05:00 · 持续 1小时5分",
    ] {
        assert!(content.contains(want), "missing {want:?} in:\n{content}");
    }
    assert!(!content.contains("{{") && !content.contains("\n\n\n"), "{content}");
}

/// `mention_label` / `mention_mobile_label`: the owner a firing alert names is mentioned; a
/// label cannot say `@all`; a recovery mentions nobody.
#[test]
fn mentions_from_alert_labels() {
    let fake = FakeWeCom::start();
    let dir = TempDir::new("msg-mention-label");
    let config = write(
        &dir,
        "config.toml",
        &format!(
            "[robots.ops]\nkey = \"{}\"\nmention_label = \"owner\"\nmention_mobile_label = \"owner_mobile\"\n\n\
             [[mentions]]\nlabel = \"team\"\nvalue = \"db\"\nmention_label = \"dba\"\n",
            fake.url()
        ),
    );
    let relay = Relay::start(&["--config", &config]);
    let alert = |status: &str, labels: serde_json::Value| json!({"status": status, "labels": labels, "startsAt": "2024-05-01T12:00:00Z"});
    let body = json!({"status": "firing", "groupKey": "m", "alerts": [
        alert("firing", json!({"alertname": "A", "owner": "zhangsan,lisi", "owner_mobile": "13800000000"})),
        alert("firing", json!({"alertname": "B", "owner": "@all", "owner_mobile": "not-a-number"})),
        alert("firing", json!({"alertname": "C", "team": "db", "dba": "wangwu"})),
        // The rule's label comes only from the alerts the rule matches.
        alert("firing", json!({"alertname": "E", "team": "web", "dba": "notme"})),
        alert("resolved", json!({"alertname": "D", "owner": "zhaoliu"})),
    ]});
    assert_eq!(relay.post(body.to_string().as_bytes()).status, 200);
    wait_until(Duration::from_secs(10), "markdown and text", || fake.delivered().len() == 2);
    let text = &fake.delivered()[1].body;
    assert_eq!(text["msgtype"], "text");
    assert_eq!(text["text"]["mentioned_list"], json!(["lisi", "wangwu", "zhangsan"]));
    assert_eq!(text["text"]["mentioned_mobile_list"], json!(["13800000000"]));
    assert!(relay.logs().contains("mention label value ignored label=owner value=\"@all\""));

    // Only resolved alerts: nobody is woken, whatever the labels say.
    let body = json!({"status": "resolved", "groupKey": "m2", "alerts": [
        alert("resolved", json!({"alertname": "A", "owner": "zhangsan"})),
    ]});
    assert_eq!(relay.post(body.to_string().as_bytes()).status, 200);
    wait_until(Duration::from_secs(10), "resolved markdown", || fake.delivered().len() == 3);
    assert_eq!(fake.delivered()[2].body["msgtype"], "markdown");
    wait_until(Duration::from_secs(5), "outbox settled", || {
        relay.metrics().contains("weixin_robot_outbox_messages{robot=\"ops\"} 0")
    });
    assert_eq!(fake.delivered().len(), 3, "no mention for a recovery");
}

// ---------------------------------------------------------------------------------------------
// The two READMEs

/// `--flag` names: after a character that cannot be part of one, up to the end of the name
/// (`--web.external-url` is one name; `--offline=yes` is `--offline`).
fn flags(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    for i in 0..b.len().saturating_sub(2) {
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b"-_".contains(&b[i - 1]));
        if !(boundary && b[i] == b'-' && b[i + 1] == b'-' && b[i + 2].is_ascii_lowercase()) {
            continue;
        }
        let len = b[i + 2..]
            .iter()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-.".contains(c))
            .count();
        let name = text[i..i + 2 + len].trim_end_matches(['.', '-']);
        out.insert(name.to_string());
    }
    out
}

/// Config keys: `key = …` lines in ```toml blocks (inline code also holds Cargo's keys such
/// as `panic = "abort"`), plus the table headers `[robots.NAME]` and `[[mentions]]`.
fn config_keys(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let key_of = |line: &str| -> Option<String> {
        let line = line.split('#').next().unwrap_or("").trim();
        let (key, _) = line.split_once(" =").or_else(|| line.split_once('='))?;
        let key = key.trim();
        let ok = !key.is_empty()
            && key.starts_with(|c: char| c.is_ascii_lowercase())
            && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        ok.then(|| key.to_string())
    };
    let mut in_toml = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_toml = trimmed == "```toml";
            continue;
        }
        if in_toml {
            if trimmed.starts_with("[[") {
                out.insert(trimmed.split(']').next().unwrap_or("").to_string() + "]]");
            } else if trimmed.starts_with("[robots.") {
                out.insert("[robots.".to_string());
            } else if let Some(k) = key_of(trimmed) {
                out.insert(k);
            }
        }
    }
    out
}

/// HTTP endpoints: the path after `GET ` or `POST `.
fn endpoints(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for method in ["GET /", "POST /"] {
        for (i, _) in text.match_indices(method) {
            let path: String = text[i + method.len() - 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/-_{}.".contains(*c))
                .collect();
            let path = path.trim_end_matches(['.', '/']);
            if !path.is_empty() {
                out.insert(path.to_string());
            }
        }
    }
    out
}

/// `name` appears in `text` as a whole word (not inside a longer name).
fn names(text: &str, name: &str) -> bool {
    let part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices(name).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + name.len()..].chars().next();
        !before.is_some_and(|c| part(c) && !name.starts_with(['-', '/', '[']))
            && !after.is_some_and(|c| part(c) && !name.ends_with('.'))
    })
}

/// Every flag, config key and endpoint named in one README is named in the other. Other
/// work adds flags to README.md in parallel, so the failure lists exactly what is missing.
#[test]
fn readmes_name_the_same_flags_keys_and_endpoints() {
    let en = std::fs::read_to_string(manifest("README.md")).expect("README.md");
    let zh = std::fs::read_to_string(manifest("README.zh-CN.md")).expect("README.zh-CN.md");
    let mut missing = Vec::new();
    for (kind, extract) in [
        ("flags", flags as fn(&str) -> BTreeSet<String>),
        ("config keys", config_keys),
        ("endpoints", endpoints),
    ] {
        for (from, to, to_name) in [(&en, &zh, "README.zh-CN.md"), (&zh, &en, "README.md")] {
            let lacking: Vec<String> =
                extract(from).into_iter().filter(|n| !names(to, n)).collect();
            if !lacking.is_empty() {
                missing
                    .push(format!("{to_name} does not name these {kind}: {}", lacking.join(", ")));
            }
        }
    }
    assert!(missing.is_empty(), "the READMEs differ:\n{}", missing.join("\n"));
    // The extractors find what they should (so an empty set cannot pass vacuously).
    let (f, k, e) = (flags(&en), config_keys(&en), endpoints(&en));
    for want in ["--tz", "--config", "--web.external-url"] {
        assert!(f.contains(want), "{want} not found in {f:?}");
    }
    for want in ["mention_label", "route_label", "[[mentions]]", "[robots."] {
        assert!(k.contains(want), "{want} not found in {k:?}");
    }
    for want in ["/alertinfo", "/-/reload", "/metrics", "/alertinfo/{robot}"] {
        assert!(e.contains(want), "{want} not found in {e:?}");
    }
}

/// Each README links to the other at its top and shows the firing and resolved examples
/// exactly as the golden files (what the binary renders) have them.
#[test]
fn readmes_link_each_other_and_show_the_rendered_examples() {
    for (file, link) in
        [("README.md", "[中文](README.zh-CN.md)"), ("README.zh-CN.md", "[English](README.md)")]
    {
        let text = std::fs::read_to_string(manifest(file)).expect("readme");
        let top: String = text.lines().take(5).collect::<Vec<_>>().join("\n");
        assert!(top.contains(link), "{file} must link {link} near its top");
        for case in ["readme_firing", "readme_resolved"] {
            let golden = std::fs::read_to_string(manifest(&format!("tests/golden/{case}.md")))
                .expect("golden");
            let block = format!("```markdown\n{}\n```", golden.trim_end());
            assert!(
                text.contains(&block),
                "{file} does not show tests/golden/{case}.md as rendered"
            );
        }
        assert!(text.contains("](docs/wecom-example.png)"), "{file}: the example image");
    }
    assert!(Path::new(&manifest("docs/wecom-example.png")).exists());
}

/// `%XX` → bytes, for reading a link back.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("utf8")
}

/// The silence link a real Alertmanager's notification produces names exactly this alert:
/// Alertmanager's own API, given the link's matchers, finds it and nothing else.
#[test]
#[ignore = "needs Alertmanager; run by ci/test.sh"]
fn silence_link_from_a_real_alertmanager_matches_the_alert() {
    use crate::alertmanager_e2e::{post_alerts, rfc3339, start_alertmanager};
    let fake = FakeWeCom::start();
    let relay = Relay::start(&["--key", &fake.url()]);
    let am = start_alertmanager(&format!("http://{}/alertinfo", relay.addr));
    let now = rfc3339(std::time::SystemTime::now());
    let labels = json!({"alertname": "E2ESilence", "namespace": "shop", "pod": "api-1", "severity": "warning"});
    post_alerts(
        &am,
        json!([
            {"labels": labels, "annotations": {"runbook_url": "https://runbooks.example/e2e"}, "startsAt": now},
            {"labels": {"alertname": "E2EOther", "namespace": "shop"}, "startsAt": now}
        ]),
    );
    wait_until(Duration::from_secs(30), "E2ESilence delivered", || {
        fake.delivered().iter().any(|r| r.content().contains("E2ESilence"))
    });
    let content = fake
        .delivered()
        .into_iter()
        .map(|r| r.content().to_string())
        .find(|c| c.contains("E2ESilence"))
        .unwrap_or_default();
    assert!(content.contains("[处理手册](https://runbooks.example/e2e)"), "{content}");
    // Under load both groups may share one message: take this alert's link.
    let (base, filter) = content
        .split("[静默此告警](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter_map(|link| link.split_once("/#/silences/new?filter="))
        .map(|(base, filter)| (base.to_string(), percent_decode(filter)))
        .find(|(_, filter)| filter.contains("alertname=\"E2ESilence\""))
        .expect("a silence link for E2ESilence");
    assert!(base.starts_with("http://"), "{base}");
    assert_eq!(
        filter,
        "{alertname=\"E2ESilence\",namespace=\"shop\",pod=\"api-1\",severity=\"warning\"}"
    );
    let query: Vec<String> = filter
        .trim_matches(['{', '}'])
        .split(',')
        .map(|m| {
            let encoded: String = m
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("filter={encoded}")
        })
        .collect();
    let r = get(([127, 0, 0, 1], am.port).into(), &format!("/api/v2/alerts?{}", query.join("&")));
    assert_eq!(r.status, 200, "{}", r.body);
    let found = r.json();
    let names: Vec<&str> = found
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["labels"]["alertname"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["E2ESilence"], "{}", r.body);
}

/// `msgtype = "text"` has no links: each becomes `name: URL` on a line of its own.
#[test]
fn text_robots_get_each_link_on_its_own_line() {
    let fake = FakeWeCom::start();
    let dir = TempDir::new("msg-text");
    let config = write(
        &dir,
        "config.toml",
        &format!("[robots.ops]\nkey = \"{}\"\nmsgtype = \"text\"\n", fake.url()),
    );
    let relay = Relay::start(&["--config", &config]);
    let body = std::fs::read(manifest("tests/golden/readme_firing.json")).expect("payload");
    assert_eq!(relay.post(&body).status, 200);
    wait_until(Duration::from_secs(10), "delivery", || fake.delivered().len() == 1);
    let got = &fake.delivered()[0].body;
    assert_eq!(got["msgtype"], "text");
    let content = got["text"]["content"].as_str().unwrap_or("");
    let links: Vec<&str> = content
        .lines()
        .filter(|l| l.contains("http"))
        .map(|l| l.split(": ").next().unwrap_or(""))
        .collect();
    assert_eq!(links, ["查看详情", "静默此告警", "处理手册"], "{content}");
    assert!(!content.contains("](") && !content.contains("<font"), "{content}");
}

/// `render --config --robot` previews a robot's template and its label mentions without a key
/// being used or a relay running.
#[test]
fn render_previews_a_robots_template_and_label_mentions() {
    let dir = TempDir::new("msg-render-config");
    let config = write(
        &dir,
        "config.toml",
        &format!(
            "[robots.k8s]\nkey = \"http://127.0.0.1:9/send?key=k\"\ntemplate = \"{}\"\nmention_label = \"container\"\n",
            manifest("packaging/template.example.txt")
        ),
    );
    let out = render(&[
        "--config",
        &config,
        "--robot",
        "k8s",
        &manifest("tests/golden/kube_prometheus.json"),
    ])
    .join("\n");
    assert!(out.contains("> 位置: shop/api-7d9f8c6b5-x2k4q (api)\n> 负责人: 无人认领"), "{out}");
    assert!(out.contains("持续 1小时5分"), "{out}");
    // The firing alert's container label ("api") is a valid user id: it is mentioned.
    assert!(out.contains(r#""mentioned_list":["api"]"#), "{out}");
}
