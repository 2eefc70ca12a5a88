"""AWS Lambda handlers for the custom Ground Truth polygon job.

Each module is self-contained (standard library, plus boto3 where it reads S3) so it can be
deployed as a single file; see docs/groundtruth.md. They are importable here only so that
the tests can exercise them against the documented input/output contracts.
"""
