#!/bin/bash
# papad service of the compose stack: runs as root only to own its data, then as "papad".
# Migrates the SQLite database, collects static files for nginx, makes its accounts
# (bootstrap.py), keeps huey's task worker running, and serves with gunicorn on :8000.
set -euo pipefail
here=/opt/recorderpi-papad
install -d -o papad -g papad -m 0755 /srv/papad /srv/papad/media /srv/papad-static
chown -R papad:papad /srv/papad /srv/papad-static
export PYTHONPATH="$here" DJANGO_SETTINGS_MODULE=recorderpi_settings DJANGO_CONFIGURATION=Pi
cd /opt/papad
run() { setpriv --reuid=papad --regid=papad --init-groups "$@"; }
run python manage.py migrate --noinput -v 0
run python manage.py collectstatic --noinput -v 0
run python manage.py shell < "$here/bootstrap.py"
# huey: HLS copies and deletions; restarted if it dies, never keeps papad from serving.
(while :; do run python manage.py run_huey -w 1 || true; sleep 5; done) &
exec setpriv --reuid=papad --regid=papad --init-groups \
  gunicorn --bind 0.0.0.0:8000 --workers "${PAPAD_WORKERS:-2}" --timeout 120 \
  --forwarded-allow-ips='*' --access-logfile - --error-logfile - papadapi.wsgi:application
