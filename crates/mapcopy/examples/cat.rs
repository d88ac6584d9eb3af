//! memmap2's `cat` example, ported: print a file through a mapping.
//!
//! memmap2 (examples/cat.rs) maps with
//!
//! ```text
//! let mmap = unsafe { Mmap::map(&file).expect("failed to map the file") };
//! ```
//!
//! — `unsafe`, because another process truncating or rewriting the file
//! would change the `&[u8]` under the program (or kill it with SIGBUS). The
//! port changes that one line and loses the `unsafe`: nobody can change
//! what a `MapCopy` holds.
//!
//! `cargo run -p mapcopy --example cat -- FILE`

use std::env;
use std::fs::File;
use std::io::{self, Write};

use mapcopy::MapCopy;

fn main() {
    let path = env::args()
        .nth(1)
        .expect("supply a single path as the program argument");

    let file = File::open(path).expect("failed to open the file");

    let mmap = MapCopy::map(&file).expect("failed to map the file");

    io::stdout()
        .write_all(&mmap[..])
        .expect("failed to output the file contents");
}
