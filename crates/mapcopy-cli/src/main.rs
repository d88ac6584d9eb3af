fn main() {
    mapcopy_check::child::dispatch();
}
