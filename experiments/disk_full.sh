#!/usr/bin/env bash
# A real full disk: a 100 MiB tmpfs (needs root) filled once the first checkpoint is published; the run
# must stop in one line naming the last good checkpoint, leave no .tmp, and resume on the same disk
# once space is freed.   sudo experiments/disk_full.sh
cd "$(dirname "$0")/.."
mountpoint -q /tmp/small || { mkdir -p /tmp/small && mount -t tmpfs -o size=100m tmpfs /tmp/small; }
rm -rf /tmp/small/*
R=/tmp/small/run
.venv/bin/reprkit train --loss reprpo --steps 10 --save-every 2 --limit 16 --batch-size 2 --eval-limit 8 --n-samples 1 \
  --no-progress --run-dir $R > /tmp/df-train.log 2>&1 &
pid=$!
while [ ! -d $R/checkpoint-000002 ] && kill -0 $pid 2>/dev/null; do sleep 0.5; done
du -sh $R/checkpoint-000002
free=$(df --output=avail -B1 /tmp/small | tail -1)
fallocate -l $((free - 20*1024*1024)) /tmp/small/filler   # leave 20 MiB: less than a checkpoint
df -h /tmp/small | tail -1
wait $pid; echo "rc $?"
grep -v "^Loading\|Generating\|Writing" /tmp/df-train.log | tail -4
ls -a $R
rm /tmp/small/filler
.venv/bin/reprkit train --resume $R --no-progress > /tmp/df-resume.log 2>&1; echo "resume rc $?"
grep -v "^Loading\|Generating\|Writing" /tmp/df-resume.log | tail -3
ls -a $R
python3 -c "
import json; rows=[json.loads(l) for l in open('$R/metrics.jsonl')]; print('steps', [r['step'] for r in rows])"
