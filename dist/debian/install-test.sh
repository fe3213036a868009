#!/usr/bin/env bash
# Builds the Debian package from the release build, installs it on this machine (as root:
# CI does), and checks that the installed relay starts on the configuration the package
# ships and answers EHLO as the `sluice` user the package made. Then removes and purges it.
# Needs cargo-deb (`cargo install cargo-deb`), swaks, and a release build (`cargo build
# --release`, or the README's test command).
set -euo pipefail
cd "$(dirname "$0")/../.."

target=${CARGO_TARGET_DIR:-target}
"$target/release/sluice" manpages "$target/man" >/dev/null
deb=$(cargo deb -p sluice --no-build --no-strip --output "$target/debian" 2>/dev/null | tail -n 1)
echo "built $deb"
dpkg-deb --info "$deb" | grep -E "Package|Version|Depends"
dpkg -i "$deb" >/dev/null

getent passwd sluice >/dev/null || { echo "no sluice user"; exit 1; }
test -f /etc/sluice/sluice.toml
test -f /lib/systemd/system/sluice.service
test -f /usr/share/man/man8/sluice.8.gz
/usr/bin/sluice check-config --config /etc/sluice/sluice.toml

# As the unit would run it (without systemd here): the package's user, its configuration.
log=$(mktemp)
runuser -u sluice -- /usr/bin/sluice serve --config /etc/sluice/sluice.toml 2>"$log" &
relay=$!
trap 'kill $relay 2>/dev/null || true; wait $relay 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    if swaks --server 127.0.0.1:2525 --quit-after EHLO --silent 2 >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
said=$(swaks --server 127.0.0.1:2525 --quit-after EHLO 2>&1 || true)
grep -q "^<-  250-localhost Hello" <<<"$said" \
    || { echo "the installed relay did not answer EHLO:"; echo "$said"; cat "$log"; exit 1; }
echo "the installed relay answers EHLO"
# As systemd stops it: SIGTERM to the relay itself (runuser is only its parent here).
pkill -TERM -u sluice -x sluice
wait $relay || true
trap - EXIT
grep -q "stopped: every session and delivery under way finished" "$log" \
    || { echo "the installed relay did not stop cleanly"; cat "$log"; exit 1; }

dpkg --purge sluice >/dev/null
! getent passwd sluice >/dev/null
echo "installed, ran, purged: ok"
