//! Hides a webhook key given with `--key` from the process's command line.
//!
//! `ps`, `top` and `/proc/PID/cmdline` show every process's arguments to every local user, and
//! the old tool's interface (`--key KEY`, kept for compatibility) puts the secret there. The
//! kernel reads the command line from the argument strings on the process's own initial stack
//! (between `arg_start` and `arg_end` of `/proc/self/stat`), so overwriting the key's bytes there
//! hides it from all of them, as `mysql -p` does with its password. The window between exec and
//! the overwrite (a few milliseconds at start) remains: `--key-file` is still the advice.

use std::ops::Range;

/// Shortest value worth hiding; shorter ones are not keys and masking them would garble
/// unrelated arguments.
const MIN_SECRET: usize = 4;

/// Overwrites every occurrence of `secret` in `block` with `*`, keeping the length (the block's
/// size cannot change). Returns how many occurrences were masked.
pub fn mask(block: &mut [u8], secret: &[u8]) -> usize {
    if secret.len() < MIN_SECRET || block.len() < secret.len() {
        return 0;
    }
    let mut found = 0;
    let mut i = 0;
    while i + secret.len() <= block.len() {
        if &block[i..i + secret.len()] == secret {
            block[i..i + secret.len()].fill(b'*');
            found += 1;
            i += secret.len();
        } else {
            i += 1;
        }
    }
    found
}

/// `arg_start..arg_end` from the text of `/proc/self/stat` (fields 48 and 49). `None` when the
/// line is not what Linux writes (emulators such as qemu-user fill those fields with 0).
pub fn arg_range(stat: &str) -> Option<Range<usize>> {
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field N is fields[N - 3].
    let start: usize = fields.get(48 - 3)?.parse().ok()?;
    let end: usize = fields.get(49 - 3)?.parse().ok()?;
    (start > 0 && end > start && end - start <= 1 << 20).then_some(start..end)
}

/// Masks `secret` in this process's command line. Best effort: logs at debug level and leaves
/// the command line as it is when `/proc` is missing or unusual.
pub fn hide(secret: &str) {
    let range = match std::fs::read_to_string("/proc/self/stat") {
        Ok(stat) => arg_range(&stat),
        Err(_) => None,
    };
    let Some(range) = range else {
        log::debug!("cannot locate the command line to hide --key (no usable /proc/self/stat)");
        return;
    };
    // SAFETY: `arg_start..arg_end` is where the kernel placed this process's argument strings,
    // in its initial stack mapping, which is readable and writable and stays mapped for the
    // life of the process. Nothing else holds a Rust reference into it (the arguments were
    // copied into owned strings by `std::env::args_os` before this runs), and the write keeps
    // every byte inside the range.
    let block = unsafe { std::slice::from_raw_parts_mut(range.start as *mut u8, range.len()) };
    let masked = mask(block, secret.as_bytes());
    log::debug!("hid --key in the command line ({masked} place(s))");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_the_key_is_masked_and_nothing_else() {
        let key = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
        let mut block = format!(
            "weixin-robot\0--key\0{key}\0--port\x006000\0--key={key}\0-k{key}\0https://x/send?key={key}\0"
        )
        .into_bytes();
        let before = block.len();
        assert_eq!(mask(&mut block, key.as_bytes()), 4);
        let text = String::from_utf8(block).unwrap_or_default();
        assert_eq!(text.len(), before);
        assert!(!text.contains(key));
        assert!(text.starts_with("weixin-robot\0--key\0****"));
        assert!(text.contains("\0--port\x006000\0--key=****"));
    }

    #[test]
    fn short_values_are_left_alone() {
        let mut block = b"a\0-p\0abc\0".to_vec();
        assert_eq!(mask(&mut block, b"abc"), 0);
        assert_eq!(&block, b"a\0-p\0abc\0");
    }

    #[test]
    fn the_argument_range_is_read_past_a_tricky_command_name() {
        // 52 fields as Linux 6 writes them; comm holds ") (" to trip a naive split.
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[48 - 3] = "140737488347000".into();
        fields[49 - 3] = "140737488347100".into();
        let stat = format!("4242 (we ) (ird) {}", fields.join(" "));
        assert_eq!(arg_range(&stat), Some(140737488347000..140737488347100));
        // qemu-user writes zeros there.
        fields[48 - 3] = "0".into();
        assert_eq!(arg_range(&format!("1 (x) {}", fields.join(" "))), None);
        assert_eq!(arg_range("garbage"), None);
    }
}
