"""S3-compatible object storage for the SDK's build-context uploads (control-plane-api.md
§4.3): a local s3proxy the main job runs, or an external S3 (MinIO, AWS) by configuration."""
