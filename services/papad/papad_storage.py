"""Make papad's MinIO bucket ready before papad starts (run inside the papad-api container).

Upstream papad stores every upload through django-storages in the bucket
PAPAD_STORAGE_BUCKET_NAME at MINIO_S3_ENDPOINT_URL, with ``public-read`` objects and unsigned
URLs: listeners' browsers fetch uploads from MinIO directly. This creates the bucket if it is
missing and lets anyone download (never list or write) its objects. Idempotent; waits up to two
minutes for MinIO. Uses boto3, which papad itself installs.
"""

import json
import os
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def main() -> int:
    bucket = os.environ["PAPAD_STORAGE_BUCKET_NAME"]
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ["MINIO_S3_ENDPOINT_URL"],
        aws_access_key_id=os.environ["MINIO_ROOT_USER"],
        aws_secret_access_key=os.environ["MINIO_ROOT_PASSWORD"],
        region_name="us-east-1",
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            break
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                print(f"papad storage: MinIO not reachable: {exc}", file=sys.stderr)
                return 1
            time.sleep(3)
    if bucket not in names:
        s3.create_bucket(Bucket=bucket)
        print(f"papad storage: bucket {bucket} created")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": ["*"]},
                       "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{bucket}/*"]}],
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
