#!/usr/bin/env bash
# Nightly harvest forecast for one plate: score new images, forecast each well, write the
# morning report, and mail the lab when a well reaches the harvest level within a day.
#   crontab:  0 3 * * *  /path/to/nightly_forecast.sh /data/plate7 /srv/www/plate7.html lab@example.org
set -uo pipefail
plate=${1:?usage: nightly_forecast.sh PLATE_FOLDER REPORT.html [MAIL_TO]}
report=${2:?usage: nightly_forecast.sh PLATE_FOLDER REPORT.html [MAIL_TO]}
mail_to=${3:-}
harvest=${HARVEST_AT:-0.8}
within=${ALERT_WITHIN:-24}

# 1. Only new images are computed (--skip-existing); the records of all of them are printed.
monolayer segment "$plate/incoming" -r --name-pattern incucyte --skip-existing --overlay \
    --out "$plate/masks" -q > "$plate/confluence.jsonl"
segmented=$?   # 1: some images failed (listed in the report); anything else non-zero: stop
if [ "$segmented" -ne 0 ] && [ "$segmented" -ne 1 ]; then
    echo "segment failed with exit $segmented" >&2
    exit "$segmented"
fi
# 2. Exit 3 means: some well reaches the harvest level within $within h (one line each on stderr).
monolayer growth "$plate/confluence.jsonl" --time elapsed_h --harvest-at "$harvest" \
    --alert-within "$within" --plot "$plate/growth.png" > "$plate/forecast.jsonl" 2> "$plate/alerts.txt"
forecast=$?
# 3. The morning page: failures first, growth curves, every image with its mask.
monolayer report "$plate/confluence.jsonl" --harvest-at "$harvest" --alert-within "$within" -o "$report" -q
if [ "$forecast" -eq 3 ] && [ -n "$mail_to" ]; then
    mail -s "$(basename "$plate"): harvest within $within h" "$mail_to" < "$plate/alerts.txt"
fi
[ "$forecast" -eq 3 ] && exit 0 || exit "$forecast"
