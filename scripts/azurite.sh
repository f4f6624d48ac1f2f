#!/usr/bin/env bash
# Start/stop the project's Azurite in the background, data under .azurite/ (ports 10000-10002).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.azurite
PIDFILE=$DIR/azurite.pid
case "${1:-start}" in
start)
    mkdir -p "$DIR"
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        echo "azurite: already running (pid $(cat "$PIDFILE"))" >&2; exit 0
    fi
    if (exec 3<>/dev/tcp/127.0.0.1/10000) 2>/dev/null; then
        echo "azurite: something already listens on 127.0.0.1:10000; using it" >&2; exit 0
    fi
    nohup node_modules/.bin/azurite --disableTelemetry --silent --skipApiVersionCheck --loose \
        --location "$DIR" --blobHost 127.0.0.1 --queueHost 127.0.0.1 --tableHost 127.0.0.1 \
        --blobPort 10000 --queuePort 10001 --tablePort 10002 >"$DIR/azurite.log" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 100); do
        if (exec 3<>/dev/tcp/127.0.0.1/10002) 2>/dev/null; then
            echo "azurite: running (pid $(cat "$PIDFILE")), data in $DIR/" >&2; exit 0
        fi
        sleep 0.1
    done
    echo "azurite: did not start; see $DIR/azurite.log" >&2; exit 1
    ;;
stop)
    if [ -f "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; rm -f "$PIDFILE"; echo "azurite: stopped" >&2; fi
    ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
