//! Fuzz target: command lines, pipelined: smtp-proto's parse and the relay's checks (see `sluice::fuzz::command`).

fn main() {
    afl::fuzz!(|input: &[u8]| sluice::fuzz::command(input));
}
