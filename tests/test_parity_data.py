"""The vendored parity data must be byte-identical to the published reference files."""

import hashlib

import pytest
from conftest import PARITY_DIR

EXPECTED = {  # from shared/parity/README.md
    "da3_small_io.safetensors": "c958aefeafebf1cebb4dfc86326a0fa2143a2ccb341b3fd4119e000297e269a8",
    "da3_small_state_dict.safetensors": "ab8287a0a22991e63abad2cde8f66f15081c8a25ebb75fa8966ea3922b3378f9",
    "vggt_small_io.safetensors": "473ba190ec7a1d51a003f35b185074c1baefc9b420fa233c37bc05fafb36e27b",
    "vggt_small_state_dict.safetensors": "2e2b7d3e6e606e913f426177f7d267541cf6331e44dd86c6bb0aeb88d11b7b9f",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parity_file_hash(name):
    digest = hashlib.sha256((PARITY_DIR / name).read_bytes()).hexdigest()
    assert digest == EXPECTED[name]
