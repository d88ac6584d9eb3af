//! `include/mapcopy.h` is what cbindgen makes of `src/lib.rs` today: a
//! change to the ABI without the header (or the other way round) fails
//! here. `MAPCOPY_BLESS=1 cargo test -p mapcopy-capi --test header`
//! rewrites the header.

use std::path::Path;

#[test]
fn committed_header_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen understands src/lib.rs")
        .write(&mut out);
    let generated = String::from_utf8(out).expect("UTF-8 header");
    let path = dir.join("include/mapcopy.h");
    if std::env::var_os("MAPCOPY_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("writing include/mapcopy.h");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/mapcopy.h is not what cbindgen generates from src/lib.rs; \
         run `MAPCOPY_BLESS=1 cargo test -p mapcopy-capi --test header` and commit it.\n\
         generated:\n{generated}"
    );
}
