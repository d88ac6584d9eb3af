//! What `/proc` tells about the machine.

use std::fs;

/// Bytes the kernel estimates it can give to a new allocation without
/// swapping out (`MemAvailable` plus free swap), from `/proc/meminfo`.
pub(crate) fn memory_available() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
}
