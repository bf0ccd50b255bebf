#!/usr/bin/env bash
# Print a Job manifest that prepares the object store for fraudops with the fraudops image: it creates the bucket
# (s3fs), writes the base training table, synthetic transactions from the project's seeded generator, to
# s3://<bucket>/data/base.parquet (the first model and every retraining train on it), and prints the registry's
# champion ("champion: none" on a new store). Credentials come from Secret fraudops-s3.
#   scripts/addons/seed-job.sh fraudops:<version> | kubectl -n fraudops apply -f -
set -euo pipefail

image="${1:?usage: $0 IMAGE}"
bucket="${BUCKET:-fraudops}"
endpoint="${S3_ENDPOINT:-http://seaweedfs.fraudops-system.svc.cluster.local:8333}"
rows="${BASE_ROWS:-20000}"

cat <<MANIFEST
apiVersion: batch/v1
kind: Job
metadata:
  name: fraudops-seed
spec:
  backoffLimit: 6
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: seed
          image: $image
          imagePullPolicy: IfNotPresent
          command:
            - sh
            - -c
            - |
              set -e
              python -c '
              import os, s3fs
              fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["FRAUDOPS_S3_ENDPOINT"]})
              if not fs.exists("$bucket"):
                  fs.mkdir("$bucket")
              print("bucket $bucket ready:", fs.exists("$bucket"))'
              fraudops data generate --rows $rows --seed 7 --population-seed 7 --start 2026-01-01 --days 30 \
                --output s3://$bucket/data/base.parquet
              python -c '
              from fraudops.registry import Registry
              print("champion:", Registry(home="/tmp/bentoml", remote="s3://$bucket/registry").champion() or "none")'

          env:
            - name: FRAUDOPS_S3_ENDPOINT
              value: $endpoint
          envFrom:
            - secretRef:
                name: fraudops-s3
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: [ALL]
          volumeMounts:
            - name: tmp
              mountPath: /tmp
          resources:
            requests: {cpu: 100m, memory: 256Mi}
            limits: {cpu: "1", memory: 1Gi}
      volumes:
        - name: tmp
          emptyDir: {}
MANIFEST
