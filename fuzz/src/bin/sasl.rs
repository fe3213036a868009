//! Fuzz target: a line of an AUTH PLAIN or LOGIN exchange (see `sluice::fuzz::sasl`).

fn main() {
    afl::fuzz!(|input: &[u8]| sluice::fuzz::sasl(input));
}
