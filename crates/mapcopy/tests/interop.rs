//! What a memmap2 user reaches for: any `AsFd`, cheap clones, safe advice,
//! `StableDeref` and `bytes::Bytes` (the workspace builds the features).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use mapcopy::{Advice, MapCopy, MapOptions, Strategy};

fn file_with(data: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(data).unwrap();
    f
}

fn data() -> Vec<u8> {
    (0..3 * 4096 + 17).map(|i| (i * 7 % 251) as u8).collect()
}

/// Strategies this process can use here (Auto included).
fn usable(path: &std::path::Path) -> Vec<Strategy> {
    let mut v = vec![Strategy::Auto];
    v.extend(
        mapcopy::probe(Some(path))
            .strategies
            .iter()
            .filter(|p| p.usable.is_ok())
            .map(|p| p.strategy),
    );
    v
}

fn opts(s: Strategy) -> MapOptions {
    let mut o = MapOptions::new();
    o.strategy(s);
    if !s.keeps(mapcopy::Consistency::PointInTime) {
        o.consistency(mapcopy::Consistency::PerPage);
    }
    o
}

#[test]
fn maps_any_as_fd() {
    let d = data();
    let f = file_with(&d);
    let file = File::open(f.path()).unwrap();
    let by_ref = MapCopy::map(&file).unwrap();
    let borrowed = MapOptions::new().map(file.as_fd()).unwrap();
    let owned: OwnedFd = File::open(f.path()).unwrap().into();
    let by_owned = MapOptions::new().offset(5).map(&owned).unwrap();
    drop(owned);
    let moved = MapCopy::map(File::open(f.path()).unwrap()).unwrap();
    assert!(by_ref[..] == d[..] && borrowed[..] == d[..] && moved[..] == d[..]);
    assert!(by_owned[..] == d[5..]);
    // The borrowed fd was not closed by mapping through it.
    assert!(file.metadata().is_ok());
    let mut m = MapOptions::new().map_mut(file.as_fd()).unwrap();
    m[0] ^= 1;
    assert_eq!(m[0], d[0] ^ 1);
}

#[test]
fn clones_share_one_mapping() {
    let d = data();
    let f = file_with(&d);
    for s in usable(f.path()) {
        let a = opts(s).map(File::open(f.path()).unwrap()).unwrap();
        let b = a.clone();
        assert_eq!(a.as_ptr(), b.as_ptr(), "{s}: a clone is the same mapping");
        // Every page read (Lazy's per-page snapshots are taken now).
        assert!(a[..] == d[..]);
        drop(a);
        std::fs::write(f.path(), b"rewritten").unwrap();
        assert!(b[..] == d[..], "{s}: the clone outlives the original");
        std::fs::write(f.path(), &d).unwrap();
    }
}

#[test]
fn advice_never_changes_the_bytes() {
    let d = data();
    let f = file_with(&d);
    for s in usable(f.path()) {
        let m = opts(s)
            .offset(100)
            .map(File::open(f.path()).unwrap())
            .unwrap();
        let before = m.to_vec();
        for a in [
            Advice::Sequential,
            Advice::Random,
            Advice::WillNeed,
            Advice::Normal,
        ] {
            m.advise(a).unwrap_or_else(|e| panic!("{s} {a:?}: {e}"));
            m.advise_range(a, 4000, 200).unwrap();
        }
        std::fs::write(f.path(), b"rewritten").unwrap();
        assert_eq!(m.to_vec(), before, "{s}");
        let e = m
            .advise_range(Advice::WillNeed, m.len() - 1, 2)
            .unwrap_err();
        assert_eq!(e.kind(), mapcopy::ErrorKind::InvalidInput, "{e}");
        std::fs::write(f.path(), &d).unwrap();
    }
}

#[test]
fn stable_deref_and_bytes_without_a_copy() {
    fn stable<T: stable_deref_trait::StableDeref + stable_deref_trait::CloneStableDeref>(_: &T) {}
    let d = data();
    let f = file_with(&d);
    let m = MapCopy::open(f.path()).unwrap();
    stable(&m);
    let ptr = m.as_ptr();
    let b: bytes::Bytes = m.into();
    assert_eq!(b.as_ptr(), ptr, "Bytes owns the mapping, no copy");
    std::fs::write(f.path(), b"rewritten").unwrap();
    assert!(b[..] == d[..]);
    let tail = b.slice(4096..);
    drop(b);
    assert!(tail[..] == d[4096..]);
}
