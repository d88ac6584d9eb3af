use std::process::Command;
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, vec![b'a'; 3 * 4096 + 100]).unwrap();
    let f = std::fs::File::open(&p).unwrap();
    let m = mapcopy::MapOptions::new().strategy(mapcopy::Strategy::Guard).map(&f).unwrap();
    println!("{:?}", m);
    let t = std::time::Instant::now();
    let st = Command::new("dd").args(["if=/dev/zero", &format!("of={}", p.display()), "bs=4096", "count=1", "seek=1", "conv=notrunc"]).status().unwrap();
    println!("dd {st} {:?}", t.elapsed());
    let st = Command::new("truncate").args(["-s", "0", p.to_str().unwrap()]).status().unwrap();
    println!("truncate {st}");
    assert!(m.iter().all(|&b| b == b'a'), "changed");
    println!("ok");
}
