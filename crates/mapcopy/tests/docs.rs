//! One source of truth for what each strategy lacks: `mapcopy::probe`
//! (`StrategyProbe::lacks`, what `mapcopy probe` prints). The repository
//! README shows the same list, rendered from it here: this test fails when
//! the README's section differs from what the probe says, and
//! `MAPCOPY_BLESS=1 cargo test -p mapcopy --test docs` rewrites it.

use std::path::Path;

const BEGIN: &str = "<!-- lacks: generated from mapcopy::probe -->";
const END: &str = "<!-- /lacks -->";

/// The README section: one bullet per strategy, in Auto's order, with
/// what it lacks (or that it lacks nothing beyond the contract).
fn render() -> String {
    let mut out = String::new();
    for s in mapcopy::probe(None).strategies {
        out.push_str(&format!("* `{}`:", s.strategy));
        if s.lacks.is_empty() {
            out.push_str(" nothing beyond the contract.\n");
            continue;
        }
        out.push('\n');
        for l in &s.lacks {
            out.push_str(&format!("  * {l}\n"));
        }
    }
    out
}

#[test]
fn readme_lists_what_probe_says_each_strategy_lacks() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let Ok(readme) = std::fs::read_to_string(&path) else {
        // A packaged crate has no repository README next to it.
        eprintln!("skipped: no repository README at {}", path.display());
        return;
    };
    let (Some(b), Some(e)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("README.md has no {BEGIN} … {END} section");
    };
    let have = &readme[b + BEGIN.len()..e];
    let want = format!("\n{}", render());
    if have == want {
        return;
    }
    if std::env::var_os("MAPCOPY_BLESS").is_some() {
        let new = format!("{}{BEGIN}{want}{}", &readme[..b], &readme[e..]);
        std::fs::write(&path, new).expect("rewriting README.md");
        return;
    }
    panic!(
        "README.md's list of what each strategy lacks differs from mapcopy::probe; \
         run `MAPCOPY_BLESS=1 cargo test -p mapcopy --test docs` and commit it.\n\
         probe says:\n{want}"
    );
}
