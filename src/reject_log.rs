//! Log lines for refused requests, at most one per client address and status a minute.
//!
//! A 401/403 goes to `warn` (someone is trying credentials, or a sender is misconfigured), any
//! other 4xx to `info` with its one-line reason. A hostile client can cause thousands of those
//! a second, so each (address, status) logs once a minute and the next line says how many it
//! stood for. The table is bounded: past [`MAX_PEERS`] addresses it is cleared.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_secs(60);
const MAX_PEERS: usize = 4096;

struct Seen {
    at: Instant,
    suppressed: u64,
}

static SEEN: Mutex<Option<HashMap<(IpAddr, u16), Seen>>> = Mutex::new(None);

/// Decides whether to log now; `Some(n)`: log, `n` lines were held back since the last one.
fn admit(
    table: &mut HashMap<(IpAddr, u16), Seen>,
    key: (IpAddr, u16),
    now: Instant,
) -> Option<u64> {
    if let Some(seen) = table.get_mut(&key) {
        if now.saturating_duration_since(seen.at) < EVERY {
            seen.suppressed += 1;
            return None;
        }
        let held = seen.suppressed;
        *seen = Seen { at: now, suppressed: 0 };
        return Some(held);
    }
    if table.len() >= MAX_PEERS {
        table.retain(|_, s| now.saturating_duration_since(s.at) < EVERY);
        if table.len() >= MAX_PEERS {
            table.clear();
        }
    }
    table.insert(key, Seen { at: now, suppressed: 0 });
    Some(0)
}

/// Logs a refused request (4xx) from `peer` (unknown: `None`, logged under 0.0.0.0).
pub fn rejected(peer: Option<std::net::SocketAddr>, status: u16, reason: &str) {
    let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
    let held = {
        let mut guard = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        let table = guard.get_or_insert_with(HashMap::new);
        admit(table, (ip, status), Instant::now())
    };
    let Some(held) = held else { return };
    let peer = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
    let more =
        if held > 0 { format!(" (and {held} more in the last minute)") } else { String::new() };
    if status == 401 || status == 403 {
        log::warn!("request refused status={status} peer={peer} reason={reason:?}{more}");
    } else {
        log::info!("request rejected status={status} peer={peer} reason={reason:?}{more}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_peer_and_status_a_minute() {
        let mut t = HashMap::new();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let t0 = Instant::now();
        assert_eq!(admit(&mut t, (a, 401), t0), Some(0));
        assert_eq!(admit(&mut t, (a, 401), t0 + Duration::from_secs(1)), None);
        assert_eq!(admit(&mut t, (a, 401), t0 + Duration::from_secs(59)), None);
        assert_eq!(admit(&mut t, (a, 400), t0), Some(0));
        assert_eq!(admit(&mut t, (b, 401), t0), Some(0));
        assert_eq!(admit(&mut t, (a, 401), t0 + Duration::from_secs(60)), Some(2));
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut t = HashMap::new();
        let t0 = Instant::now();
        for i in 0..(3 * MAX_PEERS as u32) {
            admit(&mut t, (IpAddr::from(i.to_be_bytes()), 400), t0);
            assert!(t.len() <= MAX_PEERS);
        }
    }
}
