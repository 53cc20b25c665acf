"""Units parsing: CPU, memory, durations, GPU requests and `resources:` mappings.

Each accepted case states the arithmetic of the expected integer; each refused case asserts on words of the
message, so a user reading it learns what is wrong and how to write it instead.
"""

from __future__ import annotations

from typing import Any

import pytest

from gpupool.domain.errors import ValidationError
from gpupool.domain.resources import (
    GpuRequest,
    ReplicaRequest,
    ResourceVector,
    mig_instance_milli,
    model_matches,
    parse_cpu,
    parse_duration,
    parse_gpu,
    parse_memory,
    parse_request,
)


@pytest.mark.parametrize(("value", "milli"), [
    (4, 4000),          # 4 cores * 1000
    ("4", 4000),
    (0.5, 500),         # half a core
    ("500m", 500),      # milli-cores as written
    ("4000m", 4000),
    ("1.5m", 2),        # 1.5 milli rounds up to 2: never less than asked
    (0, 0),
    ("2.007", 2007),    # exact decimal: 2.007 * 1000 in binary floating point is 2007.0000000000002
    (2.007, 2007),
    (0.1, 100),
    ("0.0015", 2),      # 1.5 milli rounds up
])
def test_cpu_is_counted_in_milli_cores(value: Any, milli: int) -> None:
    assert parse_cpu(value) == milli


@pytest.mark.parametrize(("value", "words"), [
    (-1, "cannot be negative"),
    ("-2", "cannot be negative"),
    ("four", "write cores (4, 0.5) or milli-cores (500m)"),
    (True, "got a boolean"),
    (None, "expected a number"),
    (float("inf"), "finite"),
    (float("nan"), "finite"),
    ("nan", "finite"),
    ("1e400", "more than any machine has"),
    (10**8, "more than any machine has"),   # 100 million cores: a unit typo
])
def test_cpu_nonsense_is_refused_with_a_hint(value: Any, words: str) -> None:
    with pytest.raises(ValidationError, match=r"^cpu: ") as caught:
        parse_cpu(value)
    assert words in str(caught.value)


@pytest.mark.parametrize(("value", "mib"), [
    ("16GiB", 16 * 1024),          # 16384
    ("16 GiB", 16 * 1024),
    ("16Gi", 16 * 1024),           # the trailing B is optional
    ("512Mi", 512),
    ("1.5GiB", 1536),              # 1.5 * 1024
    (".5GiB", 512),
    ("1TiB", 1024 * 1024),
    ("1G", 954),                   # 10^9 bytes / 2^20 = 953.67 -> rounded up
    ("1.5TB", 1430512),            # 1.5e12 / 2^20 = 1430511.5 -> 1430512
    ("100B", 1),                   # 100 bytes still take a MiB
    ("1KiB", 1),                   # 1/1024 MiB -> 1
    (0, 0),                        # zero needs no unit
    ("0GiB", 0),
])
def test_memory_is_counted_in_mib_rounding_up(value: Any, mib: int) -> None:
    assert parse_memory(value) == mib


@pytest.mark.parametrize(("value", "words"), [
    (16, "memory 16 needs a unit, e.g. 16GiB"),      # a bare number: bytes? GiB? refused, not guessed
    ("16", "needs a unit"),
    (-1, "cannot be negative"),
    ("-1GiB", "cannot be negative"),
    ("16XB", "unknown unit 'XB'"),
    ("lots", "write e.g. 16GiB"),
    (True, "expected a size such as 16GiB"),
    (None, "expected a size"),
    ("2PiB", "more memory than any machine has"),
])
def test_memory_nonsense_is_refused_with_a_hint(value: Any, words: str) -> None:
    with pytest.raises(ValidationError, match=r"^memory: ") as caught:
        parse_memory(value)
    assert words in str(caught.value)


@pytest.mark.parametrize(("value", "seconds"), [
    (90, 90),
    ("90s", 90),
    ("30m", 1800),        # 30 * 60
    ("6h", 21600),        # 6 * 3600
    ("1h30m", 5400),      # 3600 + 1800
    ("1h 30m", 5400),
    ("1.5h", 5400),
    ("2d", 172800),       # 2 * 86400
    (0.5, 1),             # half a second rounds up to 1
])
def test_durations_are_whole_seconds(value: Any, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(("value", "words"), [
    (0, "must be positive"),
    ("0s", "must be positive"),
    (-5, "must be positive"),
    ("6hours", "write e.g. 90s, 30m, 6h or 1h30m"),
    ("30mh", "cannot read"),
    (True, "expected a duration"),
    (float("nan"), "must be finite"),
    (float("inf"), "must be finite"),
    (1e400, "must be finite"),                # JSON 1e400 arrives as infinity
    (10**12, "at most 100 years"),
    ("99999999999999999999d", "at most 100 years"),
])
def test_duration_nonsense_is_refused(value: Any, words: str) -> None:
    with pytest.raises(ValidationError, match=r"^max_runtime: ") as caught:
        parse_duration(value, "max_runtime")
    assert words in str(caught.value)


@pytest.mark.parametrize(("value", "expected"), [
    (0, GpuRequest()),                                     # no GPU
    (2, GpuRequest(count=2)),                              # two whole cards on one node
    (1.0, GpuRequest(count=1)),
    ("2", GpuRequest(count=2)),
    (0.5, GpuRequest(share_milli=500)),                    # half of one card: 0.5 * 1000
    ("0.25", GpuRequest(share_milli=250)),
    ("500m", GpuRequest(share_milli=500)),                 # milli-GPU as written
    (0.001, GpuRequest(share_milli=1)),                    # the smallest share
    ({"count": 2, "model": ["H100", "A100"]}, GpuRequest(count=2, models=("A100", "H100"))),  # models sorted
    ({"model": "A100"}, GpuRequest(count=1, models=("A100",))),              # count defaults to 1
    ({"memory": "10GiB"}, GpuRequest(share_memory_mib=10240)),               # a share sized by memory only
    ({"share": 0.25, "memory": "10GiB"}, GpuRequest(share_milli=250, share_memory_mib=10240)),
    ({"count": 1, "memory": "40GiB"}, GpuRequest(count=1, min_memory_mib=40960)),  # a whole card >= 40 GiB
    ({"mig": "1g.10gb", "count": 2}, GpuRequest(count=2, mig_profile="1g.10gb")),
    ({"mig": "3G.40GB"}, GpuRequest(count=1, mig_profile="3g.40gb")),        # profile names are lower-cased
    ({"count": 0}, GpuRequest()),
])
def test_gpu_requests(value: Any, expected: GpuRequest) -> None:
    assert parse_gpu(value) == expected


@pytest.mark.parametrize(("value", "kind", "nominal"), [
    (2, "whole", 2000),                                  # 2 * 1000
    (0.5, "share", 500),
    ({"memory": "10GiB"}, "share", 0),                   # its milli is known only once a card is chosen
    ({"mig": "1g.10gb", "count": 2}, "mig", 284),        # 2 * floor(1/7 * 1000) = 2 * 142
    ({"mig": "3g.40gb"}, "mig", 428),                    # floor(3/7 * 1000) = 428
    (0, "none", 0),
])
def test_gpu_request_kind_and_nominal_milli(value: Any, kind: str, nominal: int) -> None:
    gpu = parse_gpu(value)
    assert (gpu.kind, gpu.nominal_milli()) == (kind, nominal)


@pytest.mark.parametrize(("value", "field", "words"), [
    (-1, "gpu", "cannot be negative"),
    ({"share": -0.5}, "gpu.share", "cannot be negative"),
    (1.5, "gpu", "a fraction must be below 1 (a share of one card) or a whole number of cards"),
    ("1.5", "gpu", "a whole number of cards"),
    (0.0001, "gpu", "rounds to 0 milli-GPU; the smallest share is 0.001"),
    (0.9999, "gpu", "rounds to a whole card; write 1 for a whole GPU"),
    ({"share": 0}, "gpu.share", "a zero-size share asks for nothing"),
    ({"share": 0.0001}, "gpu.share", "rounds to 0 milli-GPU"),
    ({"share": 1.5}, "gpu.share", "a fraction must be below 1"),
    ({"count": 2, "share": 0.5}, "gpu", "a share is part of one card"),
    ({"memory": "0GiB"}, "gpu.memory", "must be more than 0"),
    ({"memory": 10}, "gpu.memory", "needs a unit"),
    ({"count": 1.5}, "gpu.count", "whole number of cards"),
    ({"count": -1}, "gpu.count", "whole number of cards"),
    ({"count": True}, "gpu.count", "whole number of cards (got True)"),
    ({"count": 0, "model": "A100"}, "gpu", "a GPU model was given with count 0"),
    ({"model": []}, "gpu.model", "e.g. [A100, H100]"),
    ({"model": ["A100", 3]}, "gpu.model", "a list of model names"),
    ({"mig": "1g"}, "gpu.mig", "is not a MIG profile; write e.g. 1g.10gb"),
    ({"mig": "1g.10gb", "share": 0.5}, "gpu.mig", "a MIG profile already fixes compute and memory"),
    ({"mig": "1g.10gb", "count": 0}, "gpu.count", "at least one MIG instance"),
    ({"cuont": 2}, "gpu.cuont", 'unknown field (did you mean "count"?); allowed: count, memory, mig, model, share'),
    ({"modle": "A100"}, "gpu.modle", 'did you mean "model"?'),
    (True, "gpu", "got a boolean"),
    (float("nan"), "gpu", "finite"),
    ("lots", "gpu", "write 2 (whole cards), 0.5 (a share of one card)"),
    (65, "gpu", "more than any node has; split the work into replicas"),
])
def test_gpu_nonsense_is_refused_with_a_hint(value: Any, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_gpu(value)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_a_resources_mapping_becomes_a_replica_request() -> None:
    parsed = parse_request({"cpu": "500m", "memory": "16GiB", "gpu": {"count": 2, "model": ["A100", "H100"]}})
    assert parsed == ReplicaRequest(500, 16384, GpuRequest(count=2, models=("A100", "H100")))
    assert parsed.nominal() == ResourceVector(500, 16384, 2000)
    assert parsed.describe() == "0.5 CPU, 16 GiB, 2 GPU (A100|H100)"
    assert parse_request(None) == ReplicaRequest()


@pytest.mark.parametrize(("value", "words"), [
    ({"cpus": 4}, 'resources.cpus: unknown field (did you mean "cpu"?)'),
    ({"gpu": 1, "memroy": "1GiB"}, 'resources.memroy: unknown field (did you mean "memory"?)'),
    ({"memory": 16}, "resources.memory: memory 16 needs a unit"),
    ({"gpu": 1.5}, "resources.gpu: 1.5 GPUs"),
    ({"cpu": True}, "resources.cpu: expected a number, got a boolean"),
    ([1], "expected a mapping such as {cpu: 4, memory: 16GiB, gpu: 1}"),
])
def test_request_nonsense_names_the_field(value: Any, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_request(value)
    assert words in str(caught.value)


@pytest.mark.parametrize(("value", "text"), [
    ({"mig": "1g.10gb", "count": 2}, "2 x MIG 1g.10gb"),
    ({"share": 0.5, "memory": "10GiB"}, "0.5 GPU + 10 GiB GPU memory"),
    ({"count": 2, "model": ["H100", "A100"]}, "2 GPU (A100|H100)"),
    (0, "no GPU"),
])
def test_gpu_requests_describe_themselves(value: Any, text: str) -> None:
    assert parse_gpu(value).describe() == text


@pytest.mark.parametrize(("requested", "actual", "matches"), [
    ("A100", "A100-SXM4-80GB", True),     # a family selects its variants (dash-separated prefix)
    ("a100", "NVIDIA A100", True),        # case and vendor prefix do not matter
    ("A100-SXM4-80GB", "A100-SXM4-80GB", True),
    ("V100", "V100M16", False),           # not a dash-separated prefix
    ("H100", "A100", False),
])
def test_model_matching(requested: str, actual: str, matches: bool) -> None:
    assert model_matches(requested, actual) is matches


def test_mig_instance_milli_is_its_share_of_compute_slices() -> None:
    # floor(slices / 7 * 1000): 1g -> 142, 3g -> 428, 7g -> 1000 (seven 1g never exceed one card)
    assert [mig_instance_milli(p) for p in ("1g.10gb", "3g.40gb", "7g.80gb")] == [142, 428, 1000]


def test_resource_vector_arithmetic_and_dominant_share() -> None:
    a, b = ResourceVector(4000, 8192, 1000), ResourceVector(1000, 1024, 500)
    assert a + b == ResourceVector(5000, 9216, 1500)
    assert (b - a).clamp_low() == ResourceVector()
    assert a.exceeding(ResourceVector(8000, 4096, 1000)) == ("memory",)
    # DRF share against a pool of 16 CPU, 64 GiB, 4 GPU: max(4/16, 8/64, 1/4) = 0.25
    assert a.dominant_share(ResourceVector(16000, 65536, 4000)) == 0.25
    # resources the pool has none of are ignored: max(1/2) = 0.5
    assert b.dominant_share(ResourceVector(2000, 0, 0)) == 0.5
    assert ResourceVector(4000, 16384, 1500).describe() == "4 CPU, 16 GiB, 1.5 GPU"


def test_every_cpu_value_with_three_decimals_is_exact() -> None:
    # n / 1000 cores written with three decimals is exactly n milli-cores, for every n below 100 cores
    wrong = [n for n in range(100_000) if parse_cpu(f"{n // 1000}.{n % 1000:03d}") != n]
    assert wrong == []
