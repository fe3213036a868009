//! Fuzz target: an envelope address (see `sluice::fuzz::address`).

fn main() {
    afl::fuzz!(|input: &[u8]| sluice::fuzz::address(input));
}
