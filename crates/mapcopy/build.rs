//! Tells the crate whether the repository's README is next to it (in the
//! repository: its example is doctested too; in a packaged crate it is
//! not there).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(workspace_readme)");
    println!("cargo::rerun-if-changed=../../README.md");
    if std::path::Path::new("../../README.md").exists() {
        println!("cargo::rustc-cfg=workspace_readme");
    }
}
