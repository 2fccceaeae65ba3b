"""Block 0, the null block: never allocated, never cached, never written.

Block tables use it for positions that hold no KV (padding, and blocks a sliding window
released), so a kernel can read a full table; attention masks those positions. Every layer of
the core knows it, so it lives here rather than in any one role.
"""

NULL_BLOCK_ID = 0
