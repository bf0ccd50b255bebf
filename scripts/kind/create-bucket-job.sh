#!/usr/bin/env bash
# Print a Job manifest that creates the bucket `fraudops` in KFP's SeaweedFS with the fraudops image (s3fs) and
# the credentials of Secret fraudops-s3. Usage: scripts/kind/create-bucket-job.sh fraudops:<version> | kubectl apply -f -
set -euo pipefail

image="${1:?usage: $0 IMAGE}"
bucket="${BUCKET:-fraudops}"
endpoint="${S3_ENDPOINT:-http://seaweedfs.kubeflow.svc.cluster.local:8333}"

cat <<MANIFEST
apiVersion: batch/v1
kind: Job
metadata:
  name: fraudops-create-bucket
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
        - name: create-bucket
          image: $image
          imagePullPolicy: Never
          command:
            - python
            - -c
            - |
              import os, s3fs
              fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["FRAUDOPS_S3_ENDPOINT"]})
              if not fs.exists("$bucket"):
                  fs.mkdir("$bucket")
              print("bucket $bucket ready:", fs.exists("$bucket"))
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
          resources:
            requests: {cpu: 50m, memory: 128Mi}
            limits: {cpu: 500m, memory: 256Mi}
MANIFEST
