"""S3 buckets: addressing, SigV4 signing, the XML API and its errors."""
