"""The storage port on DynamoDB, one job per module: `codec` (items and exact numbers as attribute
values), `expressions` (typed conditions and updates compiled to DynamoDB expressions),
`credentials` (STS role assumption), `schema` (tables, indexes, TTL) and `store` (the engine)."""

from cnop.common.database.dynamodb.codec import MARKER_PREFIX, AttributeValue, decode_item, encode_item, serialize
from cnop.common.database.dynamodb.credentials import AssumeRole, StsClientFactory, role_credentials
from cnop.common.database.dynamodb.expressions import Assumption, Expression
from cnop.common.database.dynamodb.store import DynamoDBStore, RetryPolicy, shared_session

__all__ = [
    "MARKER_PREFIX",
    "AssumeRole",
    "Assumption",
    "AttributeValue",
    "DynamoDBStore",
    "Expression",
    "RetryPolicy",
    "StsClientFactory",
    "decode_item",
    "encode_item",
    "role_credentials",
    "serialize",
    "shared_session",
]
