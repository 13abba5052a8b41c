"""XXH3-128 (seed 0, default secret: what negflow's ids use) in plain Python, written from the XXH3
specification (github.com/Cyan4973/xxHash, doc/xxhash_spec.md), independent of the `xxhash` package that
negflow calls. tests/test_hostile_input.py checks it against the specification's published test vectors
(xsum_sanity_check.c) at every input-size class, then against negflow's ids for UTF-8 texts, which the
specification's vectors (a pseudo-random byte buffer) cannot reach."""

from __future__ import annotations

M64 = (1 << 64) - 1
PRIME32_1, PRIME32_2, PRIME32_3 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D
PRIME64_1, PRIME64_2, PRIME64_3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
PRIME64_4, PRIME64_5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5
PRIME_MX1, PRIME_MX2 = 0x165667919E3779F9, 0x9FB21C651E98DF25
SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671fcb79e64eccc0e578825ad07dccff7221"
    "b8084674f743248ee03590e6813a264c3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364eac5ac8334d3ebc3c581a0fffa1363eb"
    "170ddd51b7f0da49d316552629d4689e2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)


def u64(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 8], "little")


def u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "little")


def bswap(value: int, size: int) -> int:
    return int.from_bytes(value.to_bytes(size, "little"), "big")


def avalanche(x: int) -> int:
    x = ((x ^ (x >> 37)) * PRIME_MX1) & M64
    return x ^ (x >> 32)


def avalanche_xxh64(x: int) -> int:
    x = ((x ^ (x >> 33)) * PRIME64_2) & M64
    x = ((x ^ (x >> 29)) * PRIME64_3) & M64
    return x ^ (x >> 32)


def fold(a: int, b: int) -> int:
    """The 128-bit product's halves xored."""
    product = a * b
    return (product ^ (product >> 64)) & M64


def mix(data: bytes, at: int, secret_at: int) -> int:
    return fold(u64(data, at) ^ u64(SECRET, secret_at), u64(data, at + 8) ^ u64(SECRET, secret_at + 8))


def mix_two(acc: list[int], data: bytes, first: int, second: int, secret_at: int) -> None:
    acc[0] = (acc[0] + mix(data, first, secret_at)) & M64
    acc[1] = (acc[1] + mix(data, second, secret_at + 16)) & M64
    acc[0] ^= (u64(data, second) + u64(data, second + 8)) & M64
    acc[1] ^= (u64(data, first) + u64(data, first + 8)) & M64


def short(data: bytes) -> tuple[int, int]:
    """0 to 16 bytes: (low, high)."""
    n = len(data)
    if n == 0:
        return avalanche_xxh64(u64(SECRET, 64) ^ u64(SECRET, 72)), avalanche_xxh64(u64(SECRET, 80) ^ u64(SECRET, 88))
    if n <= 3:
        combined = data[-1] | n << 8 | data[0] << 16 | data[n >> 1] << 24
        swapped = bswap(combined, 4)
        rotated = ((swapped << 13) | (swapped >> 19)) & 0xFFFFFFFF
        low = (u32(SECRET, 0) ^ u32(SECRET, 4)) ^ combined
        high = (u32(SECRET, 8) ^ u32(SECRET, 12)) ^ rotated
        return avalanche_xxh64(low), avalanche_xxh64(high)
    if n <= 8:
        value = (u64(SECRET, 16) ^ u64(SECRET, 24)) ^ (u32(data, 0) | u32(data, n - 4) << 32)
        product = value * ((PRIME64_1 + (n << 2)) & M64)
        low, high = product & M64, product >> 64
        high = (high + (low << 1)) & M64
        low ^= high >> 3
        low ^= low >> 35
        low = (low * PRIME_MX2) & M64
        return low ^ (low >> 28), avalanche(high)
    first, last = u64(data, 0), u64(data, n - 8)
    val1 = (u64(SECRET, 32) ^ u64(SECRET, 40)) ^ first ^ last
    val2 = (u64(SECRET, 48) ^ u64(SECRET, 56)) ^ last
    product = val1 * PRIME64_1
    low = ((product & M64) + ((n - 1) << 54)) & M64
    high = ((product >> 64) + val2 + (val2 & 0xFFFFFFFF) * (PRIME32_2 - 1)) & M64
    low ^= bswap(high, 8)
    product = low * PRIME64_2
    low, high = product & M64, ((product >> 64) + high * PRIME64_2) & M64
    return avalanche(low), avalanche(high)


def medium(data: bytes) -> tuple[int, int]:
    """17 to 240 bytes: (low, high)."""
    n = len(data)
    acc = [(n * PRIME64_1) & M64, 0]
    if n <= 128:
        for i in reversed(range(((n - 1) >> 5) + 1)):
            mix_two(acc, data, i * 16, n - i * 16 - 16, i * 32)
    else:
        for i in range(4):
            mix_two(acc, data, i * 32, i * 32 + 16, i * 32)
        acc = [avalanche(acc[0]), avalanche(acc[1])]
        for i in range(4, n >> 5):
            mix_two(acc, data, i * 32, i * 32 + 16, (i - 4) * 32 + 3)
        mix_two(acc, data, n - 16, n - 32, 103)
    low = (acc[0] + acc[1]) & M64
    high = (acc[0] * PRIME64_1 + acc[1] * PRIME64_4 + n * PRIME64_2) & M64
    return avalanche(low), (-avalanche(high)) & M64


def accumulate(acc: list[int], data: bytes, at: int, secret_at: int) -> None:
    for i in range(8):
        lane = u64(data, at + 8 * i)
        value = lane ^ u64(SECRET, secret_at + 8 * i)
        acc[i ^ 1] = (acc[i ^ 1] + lane) & M64
        acc[i] = (acc[i] + (value & 0xFFFFFFFF) * (value >> 32)) & M64


def merge(acc: list[int], start: int, secret_at: int) -> int:
    result = start
    for i in range(4):
        result += fold(
            acc[2 * i] ^ u64(SECRET, secret_at + 16 * i), acc[2 * i + 1] ^ u64(SECRET, secret_at + 16 * i + 8)
        )
    return avalanche(result & M64)


def long(data: bytes) -> tuple[int, int]:
    """More than 240 bytes: blocks of 16 stripes, each block's accumulators scrambled, then the last stripe."""
    n, stripes = len(data), (len(SECRET) - 64) // 8
    block = 64 * stripes
    acc = [PRIME32_3, PRIME64_1, PRIME64_2, PRIME64_3, PRIME64_4, PRIME32_2, PRIME64_5, PRIME32_1]
    blocks = (n - 1) // block
    for b in range(blocks):
        for s in range(stripes):
            accumulate(acc, data, b * block + s * 64, s * 8)
        for i in range(8):
            acc[i] = ((acc[i] ^ (acc[i] >> 47) ^ u64(SECRET, len(SECRET) - 64 + 8 * i)) * PRIME32_1) & M64
    for s in range((n - blocks * block - 1) // 64):
        accumulate(acc, data, blocks * block + s * 64, s * 8)
    accumulate(acc, data, n - 64, len(SECRET) - 71)
    return merge(acc, (n * PRIME64_1) & M64, 11), merge(acc, ~(n * PRIME64_2) & M64, len(SECRET) - 75)


def xxh3_128_hex(data: bytes) -> str:
    """The canonical digest (high half first, big-endian) as 32 hex digits, as xxhash's hexdigest writes it."""
    low, high = short(data) if len(data) <= 16 else medium(data) if len(data) <= 240 else long(data)
    return f"{high:016x}{low:016x}"
