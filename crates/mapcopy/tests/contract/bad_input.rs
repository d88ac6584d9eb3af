//! Bad input: each gets a clear error, never a panic or a mapping.

use super::*;

#[derive(Clone, Copy, Debug)]
pub(super) enum Bad {
    Directory,
    Fifo,
    UnixSocket,
    DevNull,
    ProcFile,
    WriteOnly,
    OPath,
    OffsetPastEnd,
    Overflow,
    UnalignedOffset,
    ZeroLength,
    EmptyFile,
}

pub(super) const BAD: [Bad; 12] = [
    Bad::Directory,
    Bad::Fifo,
    Bad::UnixSocket,
    Bad::DevNull,
    Bad::ProcFile,
    Bad::WriteOnly,
    Bad::OPath,
    Bad::OffsetPastEnd,
    Bad::Overflow,
    Bad::UnalignedOffset,
    Bad::ZeroLength,
    Bad::EmptyFile,
];

impl Bad {
    pub(super) fn name(self) -> &'static str {
        match self {
            Bad::Directory => "directory",
            Bad::Fifo => "fifo",
            Bad::UnixSocket => "unix-socket",
            Bad::DevNull => "dev-null",
            Bad::ProcFile => "proc-file",
            Bad::WriteOnly => "write-only",
            Bad::OPath => "o-path",
            Bad::OffsetPastEnd => "offset-past-end",
            Bad::Overflow => "offset-len-overflow",
            Bad::UnalignedOffset => "unaligned-offset-ok",
            Bad::ZeroLength => "zero-length-ok",
            Bad::EmptyFile => "empty-file-ok",
        }
    }
}

/// `None` = a strategy-specific outcome (Ok when usable, Unsupported not).
pub(super) fn bad_expected(b: Bad) -> Option<ErrorKind> {
    match b {
        Bad::UnalignedOffset | Bad::ZeroLength | Bad::EmptyFile => None,
        _ => Some(ErrorKind::InvalidInput),
    }
}

pub(super) fn bad_input_case(s: Strategy, b: Bad) -> Outcome {
    let p = page();
    let tf = TestFile::new(3 * p + 1).map_err(io("test file"))?;
    let content = tf.contents().map_err(io("read"))?;
    let mut o = mapcopy_check::options(s);
    let mut want = content.clone();
    let file: File = match b {
        Bad::Directory => File::open(tf.dir()).map_err(io("open dir"))?,
        Bad::Fifo => {
            let fifo = tf.dir().join("fifo");
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &fifo,
                rustix::fs::FileType::Fifo,
                0o600.into(),
                0,
            )
            .map_err(io("mkfifo"))?;
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .map_err(io("open fifo"))?
        }
        Bad::UnixSocket => {
            let (a, _b) = std::os::unix::net::UnixStream::pair().map_err(io("socketpair"))?;
            File::from(OwnedFd::from(a))
        }
        Bad::DevNull => File::open("/dev/null").map_err(io("/dev/null"))?,
        Bad::ProcFile => File::open("/proc/self/status").map_err(io("/proc/self/status"))?,
        Bad::WriteOnly => OpenOptions::new()
            .write(true)
            .open(tf.path())
            .map_err(io("open O_WRONLY"))?,
        Bad::OPath => OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(tf.path())
            .map_err(io("open O_PATH"))?,
        Bad::OffsetPastEnd => {
            o.offset(content.len() as u64 + 1);
            tf.open().map_err(io("open"))?
        }
        Bad::Overflow => {
            o.offset(10).len(usize::MAX - 5);
            tf.open().map_err(io("open"))?
        }
        Bad::UnalignedOffset => {
            o.offset(p as u64 + 7).len(p + 3);
            want = content[p + 7..2 * p + 10].to_vec();
            tf.open().map_err(io("open"))?
        }
        Bad::ZeroLength => {
            o.offset(5).len(0);
            want.clear();
            tf.open().map_err(io("open"))?
        }
        Bad::EmptyFile => {
            std::fs::write(tf.path(), b"").map_err(io("truncate"))?;
            want.clear();
            tf.open().map_err(io("open"))?
        }
    };
    let usable = if s == Strategy::Auto {
        Ok(())
    } else {
        usable_in(s, &std::env::temp_dir())
    };
    let mut_refused = if usable.is_ok() {
        offers_map_mut(s, &std::env::temp_dir()).is_err()
    } else {
        false
    };
    for mutable in [false, true] {
        let what = format!(
            "{} with {s}{}",
            b.name(),
            if mutable { " (map_mut)" } else { "" }
        );
        let r: Result<Vec<u8>, mapcopy::Error> = if mutable {
            o.map_mut(&file).map(|m| m.to_vec())
        } else {
            o.map(&file).map(|m| m.to_vec())
        };
        match (bad_expected(b), r) {
            (Some(kind), Err(e)) if e.kind() == kind => {
                if e.to_string().is_empty() {
                    return fail(format!("{what}: empty error message"));
                }
                eprintln!("{what}: {:?}: {e}", e.kind());
            }
            (Some(kind), r) => {
                return fail(format!(
                    "{what}: want {kind:?}, got {:?}",
                    r.map(|v| v.len())
                ));
            }
            (None, Ok(got)) if usable.is_ok() && !(mutable && mut_refused) => {
                check_bytes(&got, &want, &what)?
            }
            (None, Err(e)) if mutable && mut_refused && e.kind() == ErrorKind::Unsupported => {
                eprintln!("{what}: {s} refuses map_mut: {e}");
            }
            (None, Err(e)) if usable.is_err() && e.kind() == ErrorKind::Unsupported => {
                eprintln!("{what}: Unsupported as probe said: {e}");
            }
            (None, r) => {
                return fail(format!(
                    "{what}: probe says {usable:?}, map gave {:?}",
                    r.map(|v| v.len())
                ));
            }
        }
    }
    Ok(Completion::Completed)
}
