"""CPU tests of the benchmarks' FLOP count (bench_e2e.step_flops, bench_layer.layer_flops) and of the e2e table's
FLOPs columns: the count derived from the weight schema against the formula written out from the config."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the bench modules import it (CPU build suffices)
import clusterfusion as cf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_e2e  # noqa: E402
import bench_layer  # noqa: E402


def expected_flops(c, ctx):
    """Per decoded token: 2 FLOPs per weight multiply-add of each matrix (q|k|v, o, MLP per layer, the LM head),
    plus attention's 4 * heads * head_dim * ctx per layer; written out from the config's fields."""
    q, kv = c.heads * c.head_dim, c.kv_heads * c.head_dim
    mlp_matrices = 3 if c.arch == cf.Architecture.Llama else 2  # gate, up, down / up, down
    per_layer = c.hidden * (q + 2 * kv) + q * c.hidden + mlp_matrices * c.ffn * c.hidden
    return 2 * (c.layers * per_layer + c.vocab * c.hidden) + c.layers * 4 * c.heads * c.head_dim * ctx


@pytest.mark.parametrize("name", cf.model_names())
@pytest.mark.parametrize("ctx", [0, 1, 512, 2048])
def test_step_flops_matches_the_formula_for_every_embedded_model(name, ctx):
    c = cf.ModelConfig.named(name)
    assert bench_e2e.step_flops(c, ctx) == expected_flops(c, ctx)


def test_pythia_2_8b_flops_written_out():
    # 32 layers of (3h + h) h + 2 f h, h = 2560, f = 10240; LM head 50304 x 2560; 32 heads of 80.
    h, f = 2560, 10240
    weights = 32 * (4 * h * h + 2 * f * h) + 50304 * h
    c = cf.ModelConfig.named("pythia-2.8b")
    assert bench_e2e.step_flops(c, 512) == 2 * weights + 32 * 4 * 32 * 80 * 512
    assert bench_e2e.step_flops(c, 0) / 1e9 == pytest.approx(5.29, abs=0.01)


def test_llama_attention_counts_query_heads_and_projections_count_kv_heads():
    c = cf.ModelConfig.named("llama-3-8b")
    assert c.kv_heads < c.heads  # grouped-query attention: k and v are smaller than q
    h, hd = c.hidden, c.head_dim
    layer = 2 * (h * h + 2 * c.kv_heads * hd * h + h * h + 3 * c.ffn * h)
    assert bench_layer.layer_flops(c, 0) == layer
    assert bench_layer.layer_flops(c, 100) - layer == 4 * c.heads * hd * 100


def test_a_tied_lm_head_counts_once_and_the_embedding_lookup_not_at_all():
    c = cf.ModelConfig.named("llama-3.2-1b")
    untied = cf.ModelConfig.named("llama-3.2-1b")
    c.tied_embeddings, untied.tied_embeddings = True, False
    head = 2 * c.vocab * c.hidden
    assert bench_e2e.step_flops(c, 7) == c.layers * bench_layer.layer_flops(c, 7) + head
    assert bench_e2e.step_flops(untied, 7) == bench_e2e.step_flops(c, 7)


def test_vectors_are_not_counted():
    specs = [{"shape": (3, 4)}, {"shape": (4,)}, {"shape": (5, 2)}]
    assert bench_layer.matrix_elements(specs) == 22


def test_e2e_rows_and_table_carry_flops_per_token_and_achieved_tflops():
    c = cf.ModelConfig.named("pythia-2.8b")
    flops_at = lambda ctx: bench_e2e.step_flops(c, ctx)  # noqa: E731
    times = [5.0 + 2.0 * i for i in range(16)]  # TTFT 5 ms, then one token every 2 ms
    rows = bench_e2e.rows_for("pythia-2.8b", "clusterfusion_graph", 32, times, [16], lambda ctx: 4.27e9, 4.27e12,
                              {"host_ms_per_step": 0.003}, flops_at)
    (row,) = rows
    flops = bench_e2e.step_flops(c, 32 + 16 / 2)  # the steps' mean context, as the floor
    assert row["tpot_ms"] == pytest.approx(2.0) and row["floor_ms"] == pytest.approx(1.0)
    assert row["gflop_per_token"] == pytest.approx(flops / 1e9)
    assert row["tflops"] == pytest.approx(flops / 2e-3 / 1e12)
    assert row["host_ms_per_step"] == 0.003
    result = dict(device_name="GPU", read_bw_TBps=4.27, rows=rows, errors=[],
                  at_ctx512={"pythia-2.8b": {"floor_ms": 1.3, "gflop_per_token": 5.3,
                                             "clusterfusion_graph": dict(tpot_ms=2.0, vs_floor=1.54, tflops=2.65)}})
    text = bench_e2e.table(result)
    assert "GFLOP/tok" in text.splitlines()[1] and "TFLOP/s" in text.splitlines()[1]
    assert f"{flops / 1e9:9.3f} {flops / 2e-3 / 1e12:7.3f}" in text.splitlines()[2]
    assert "5.300 GFLOP/token" in text and "2.650 TFLOP/s" in text


def test_e2e_table_reads_results_written_before_the_flops_columns():
    old = dict(device_name="GPU", read_bw_TBps=4.27, errors=[],
               rows=[dict(model="m", system="s", decode_tokens=16, ttft_ms=1.0, tpot_ms=2.0, tok_s=500.0,
                          floor_ms=1.0)],
               at_ctx512={"m": {"floor_ms": 1.0, "s": dict(tpot_ms=2.0, vs_floor=2.0)}})
    text = bench_e2e.table(old)
    assert "s 2.000 ms (2.00x)" in text
