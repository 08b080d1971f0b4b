//! Storm mode fixes from an adversarial review (issue 15), over the real binary.

use serde_json::json;

use crate::util::{run_to_exit, TempDir};

/// Bug 2: a long label sorting before `instance` used to push `instance=…` past the compact
/// line's cut, so the preview's compact message showed five lines without their host.
#[test]
fn issue_15_compact_lines_name_their_host_despite_long_labels() {
    let dir = TempDir::new("storm-fix-long");
    let long = format!("/0/{}", "z".repeat(400));
    let alerts: Vec<_> = (0..5)
        .map(|i| {
            json!({
                "status": "firing",
                "labels": {"alertname": "DiskFull", "aaa_path": format!("{long}{i}"),
                           "instance": format!("host-{i}:9100"), "severity": "warning"},
                "annotations": {"summary": "disk full"},
                "startsAt": "2024-05-01T12:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": format!("f{i}"),
            })
        })
        .collect();
    let body = json!({
        "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
        "receiver": "wecom", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://am:9093", "alerts": alerts,
    });
    let file = dir.path().join("long.json");
    std::fs::write(&file, body.to_string()).expect("write");
    let (code, out, err) = run_to_exit(&["render", "--digest", file.to_str().expect("utf8")], &[]);
    assert_eq!(code, Some(0), "{err}");
    let compact = &out[out.find("----- compact message").expect("a compact message")..];
    for i in 0..5 {
        let line = compact
            .lines()
            .find(|l| l.contains(&format!("instance=host-{i}:9100")))
            .unwrap_or_else(|| panic!("host-{i} on no compact line:\n{compact}"));
        assert!(line.contains("z…"), "the long value is cut, not the line: {line}");
    }
}
