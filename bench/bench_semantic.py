"""Semantic cache and retrieval benchmarks (one command; ratios against a baseline run in the same process).

    python bench/bench_semantic.py                 # all three parts
    python bench/bench_semantic.py --sizes 1000 10000 100000 --chunks 10000
    python bench/bench_semantic.py --only pairs --pairs bench/semantic_pairs_holdout2.jsonl --fill 100000

(a) semantic-cache lookup latency, embedding excluded, at 1k/10k/100k entries in one partition: our
    VectorSet (brute force up to 8192 entries, IVF beyond) against a plain numpy brute-force scan; recall of
    the IVF probe on near-duplicate queries. Goal: p50 <= 1 ms at 100k.
(a2) a cache in use: lookup then add, 300 rounds at 100k entries, against the pre-issue-19 VectorSet (kept
    here as OldVectorSet) in the same process. Goal: p95 <= 5 ms.
(b) hit rate on paraphrases and false-hit rate on meaning changes over bench/semantic_pairs.jsonl, through
    the real SemanticCache (embedding + threshold + guard) against a plain cosine cache at the same threshold.
    Goal: >= 90% hits, <= 1% false hits. Also times the whole lookup (guard included, embedding excluded),
    with ``--fill N`` in one partition of N more entries, and embedding a request with its words.
    Sets: semantic_pairs.jsonl (tune here), _holdout, _independent (another author), _holdout2 (written last).
(v) --llm-semantic-verify=judge on the held-out sets (``--only verify``): paraphrases and meaning changes served
    with the judge verifier against the guard alone, in the same process, through the real runner path (the
    verifier calls ModelRunner.complete: litellm, the exact cache). Two judges, reported apart:
    ``oracle``: the scripted server (tests/helpers/llm_server.py) answering each pair's true label after
    ``--judge-latency`` (50 ms): the band's recall ceiling and the cost per lookup (judge calls, added latency),
    then the same lookups again (the verdicts are kept: no judge call; another process reads them from the
    exact cache, tests/unit/test_semantic_verify.py);
    ``smollm2``: the offline local/smollm2 (SmolLM2-135M) on a random ``--sample`` of each set: what an offline
    judge does today.
        python bench/bench_semantic.py --only verify --judge oracle smollm2 --sample 40
(c) index build throughput (chunks/s, real model, real lancedb) and query p50 including embedding at
    ``--chunks`` chunks. Goal: <= 15 ms at 10k chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import re as _re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))

from pytest_llmeval.cache import semantic  # noqa: E402
from pytest_llmeval.cache.embeddings import get_embedder  # noqa: E402
from pytest_llmeval.cache.semantic import SemanticCache, VectorSet, partition_key  # noqa: E402


def ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:7.3f} ms  p95 {np.percentile(values, 95) * 1000:7.3f} ms"


def clustered(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Embedding-like data: requests come in topics (clusters), not uniformly on the sphere."""
    centers = rng.standard_normal((max(8, n // 200), dim)).astype(np.float32)
    data = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


class OldVectorSet:
    """The VectorSet before issue 19 (kept here as the baseline): rows appended as blocks and stacked into a new
    matrix at the next search (a copy of the whole set after every add), the IVF index rebuilt from scratch
    by a search once the unindexed tail passed max(4096, a quarter of the indexed rows)."""

    def __init__(self, dim: int) -> None:
        self.dim, self.keys, self._blocks, self._matrix, self._ivf = dim, [], [], None, None

    def add(self, vector: np.ndarray, text: str, key: str) -> None:
        self._blocks.append(vector.reshape(1, -1))
        self.keys.append(key)

    @property
    def matrix(self) -> np.ndarray:
        if self._blocks:
            parts = ([self._matrix] if self._matrix is not None else []) + self._blocks
            self._matrix = np.vstack(parts).astype(np.float32, copy=False)
            self._blocks = []
        return self._matrix

    def search(self, query: np.ndarray, k: int = 8) -> list[tuple[float, int]]:
        matrix = self.matrix
        n = len(matrix)
        if n <= semantic.BRUTE_FORCE_MAX:
            ids, scores = np.arange(n), matrix @ query
        else:
            if self._ivf is None or n - self._ivf[3] > max(semantic.BRUTE_FORCE_MAX // 2, self._ivf[3] // 4):
                lists = semantic._Lists(matrix)  # the same k-means training as today's index
                order = np.concatenate([lists.ids[c][:lists.counts[c]] for c in range(len(lists.counts))])
                offsets = np.concatenate([[0], np.cumsum(lists.counts)])
                self._ivf = (lists.centroids, order, offsets, n, np.ascontiguousarray(matrix[order]))
            centroids, order, offsets, indexed, grouped = self._ivf
            lists_ = np.argpartition(-(centroids @ query), min(semantic.PROBES, len(centroids) - 1))[:semantic.PROBES]
            parts = [(grouped[offsets[c]:offsets[c + 1]] @ query, order[offsets[c]:offsets[c + 1]]) for c in lists_]
            if indexed < n:
                parts.append((matrix[indexed:] @ query, np.arange(indexed, n)))
            scores = np.concatenate([p[0] for p in parts])
            ids = np.concatenate([p[1] for p in parts])
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        top = top[np.argsort(-scores[top])]
        return [(float(scores[i]), int(ids[i])) for i in top]


def bench_growing(n: int, rounds: int = 300) -> None:
    """A cache in use: every lookup is followed by an add (a miss recorded), as in a run of new requests."""
    print(f"\n(a2) lookup then add, {rounds} rounds on a {n}-entry partition (embedding excluded): before -> now")
    rng = np.random.default_rng(3)
    data = clustered(n + rounds, 384, rng)
    results = {}
    for name, cls in (("before (stack + rebuild)", OldVectorSet), ("now (preallocated + lists)", VectorSet)):
        vs = cls(dim=384)
        for i in range(n):
            vs.add(data[i], "", str(i))
        vs.search(data[0])  # the first search builds the index, once per process, in both
        times = []
        for j in range(rounds):
            q = data[n + j]
            t = time.perf_counter()
            vs.search(q)
            times.append(time.perf_counter() - t)
            vs.add(q, "", str(n + j))
        results[name] = times
        print(f"  {name:28} {ms(times)}")
    (b, nb), (a, na) = results.items()
    print(f"  now / before: p50 x{statistics.median(na) / statistics.median(nb):.3f}  "
          f"p95 x{np.percentile(na, 95) / np.percentile(nb, 95):.3f}")


def bench_lookup(sizes: list[int], queries: int = 300) -> None:
    print("\n(a) semantic-cache lookup latency, embedding excluded (384-dim, one partition)")
    rng = np.random.default_rng(0)
    for n in sizes:
        data = clustered(n, 384, rng)
        vs = VectorSet(dim=384)
        for i, v in enumerate(data):
            vs.add(v, "", str(i))
        picks = rng.choice(n, queries, replace=False)
        qs = data[picks] + 0.03 * rng.standard_normal((queries, 384)).astype(np.float32)
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
        start = time.perf_counter()
        vs.search(qs[0])  # builds the IVF index once past the brute-force size
        setup = time.perf_counter() - start
        ours, base, found = [], [], 0
        matrix = vs.matrix
        for q, want in zip(qs, picks, strict=True):
            t = time.perf_counter()
            best = vs.search(q, k=semantic.CANDIDATES)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            scores = matrix @ q
            top = np.argpartition(-scores, semantic.CANDIDATES)[:semantic.CANDIDATES]
            top[np.argsort(-scores[top])]
            base.append(time.perf_counter() - t)
            found += best[0][1] == want
        how = "IVF" if n > semantic.BRUTE_FORCE_MAX else "brute force"
        ratio = statistics.median(ours) / statistics.median(base)
        print(f"  {n:>7} entries  ours ({how:11}) {ms(ours)}   numpy scan {ms(base)}   x{ratio:.2f} "
              f"  nearest found {found}/{queries}   index build {setup:.2f} s")


def bench_pairs(path: Path, threshold: float, fill: int = 0) -> None:
    print(f"\n(b) hits on {path.name} at cosine >= {threshold} (real model, real diskcache)"
          + (f", each pair's partition holding {fill} other entries" if fill else ""))
    pairs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    embedder = get_embedder()
    embedder.encode(["warm up"])
    tmp = Path(tempfile.mkdtemp())
    try:
        cache = SemanticCache(tmp / "sem", threshold=threshold)
        alone, embed_s, va, vb = [], [], [], []
        for p in pairs:
            t = time.perf_counter()
            embedder.encode([p["b"]])
            alone.append(time.perf_counter() - t)
            va.append(cache.embed(p["a"]))
            t = time.perf_counter()
            vb.append(cache.embed(p["b"]))  # the request and its words, as the runner does before a lookup
            embed_s.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        for i, (p, v) in enumerate(zip(pairs, va, strict=True)):
            cache.add(partition_key(pair=i), p["a"], f"k{i}", vector=v)
        add_s = (time.perf_counter() - t0) / len(pairs)
        cache._words.clear()  # lookups must find the cached requests' words in the store, as another process would
        for p in pairs:  # the lookup's own words: embedded with it (the runner calls embed first)
            cache._words.update({w: embedder.encode([w])[0] for w in semantic._content_words(p["b"])
                                 if w not in cache._words})
        rows: dict[str, list[int]] = {}
        lookups = []
        for i, (p, v, w) in enumerate(zip(pairs, vb, va, strict=True)):
            t = time.perf_counter()
            ours = cache.lookup(partition_key(pair=i), p["b"], vector=v) is not None
            lookups.append(time.perf_counter() - t)
            plain = float(v @ w) >= threshold
            r = rows.setdefault(p["label"], [0, 0, 0])
            r[0] += 1
            r[1] += ours
            r[2] += plain
        if fill:  # one partition: `fill` entries far from any request (random directions) plus every pair's first text
            shared = partition_key(pair="all")
            cache._sync()
            big = cache._sets[shared] = VectorSet(dim=embedder.dim)
            for i, v in enumerate(clustered(fill, embedder.dim, np.random.default_rng(4))):
                big.add(v, "", f"fill{i}")
            for i, (p, v) in enumerate(zip(pairs, va, strict=True)):
                big.add(v, p["a"], f"k{i}")
            big.search(vb[0])  # builds the index once, outside the timing
            filled = []
            for p, v in zip(pairs, vb, strict=True):
                t = time.perf_counter()
                cache.lookup(shared, p["b"], vector=v)
                filled.append(time.perf_counter() - t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    para = rows.pop("paraphrase")
    changed = [sum(r[i] for r in rows.values()) for i in range(3)]
    print(f"  {'pairs':28} {'n':>4}  {'ours: served':>13}  {'plain cosine: served':>21}")
    print(f"  {'paraphrases (want served)':28} {para[0]:>4}  {para[1] / para[0]:>13.1%}  {para[2] / para[0]:>21.1%}")
    for label, r in sorted(rows.items()):
        print(f"  {label + ' (want missed)':28} {r[0]:>4}  {r[1] / r[0]:>13.1%}  {r[2] / r[0]:>21.1%}")
    print(f"  {'all meaning changes':28} {changed[0]:>4}  {changed[1] / changed[0]:>13.1%}  "
          f"{changed[2] / changed[0]:>21.1%}")
    print(f"  lookup incl. guard, embedding excluded: {ms(lookups)}; add {add_s * 1000:.2f} ms")
    if fill:
        print(f"  lookup incl. guard in one partition of {fill + len(pairs)} entries: {ms(filled)}")
    print(f"  embedding the request with its words: {ms(embed_s)}  (the request alone: {ms(alone)}; "
          f"x{statistics.median(embed_s) / statistics.median(alone):.2f})")


def bench_index(chunks: int) -> None:
    from pytest_llmeval.rag.index import DocIndex

    print(f"\n(c) retrieval index: build and query at ~{chunks} chunks (real model, real lancedb)")
    rng = np.random.default_rng(2)
    words = ("sphere cube render window scene colour radius actor camera light shadow texture mesh vertex "
             "normal shader buffer frame pixel image export import animation timer event mouse key zoom "
             "rotate scale translate matrix vector point line polygon volume surface grid axis label").split()
    tmp = Path(tempfile.mkdtemp())
    try:
        docs = tmp / "docs"
        docs.mkdir()
        per_file = 20
        for f in range(max(1, chunks // per_file)):
            sections = []
            for s in range(per_file):
                body = " ".join(rng.choice(words, 60))
                sections.append(f"## Topic {f}-{s}\n\n{body.capitalize()}.\n")
            (docs / f"page{f:05d}.md").write_text(f"# Page {f}\n\n" + "\n".join(sections))
        index = DocIndex(docs, base_dir=tmp / "index")
        get_embedder().encode(["warm up"])
        stats = index.build(progress=False)
        rate = stats.chunks / stats.seconds
        from pytest_llmeval.rag.chunking import chunk_file

        sample = [c.text for p in sorted(docs.iterdir())[:50] for c in chunk_file(p, docs)]
        t = time.perf_counter()
        get_embedder().encode(sample)
        model_rate = len(sample) / (time.perf_counter() - t)
        print(f"  build: {stats.chunks} chunks from {stats.files} files in {stats.seconds:.1f} s = {rate:.0f} chunks/s"
              f" (embedding the same chunks alone: {model_rate:.0f} chunks/s; x{rate / model_rate:.2f} of it)")
        t = time.perf_counter()
        again = DocIndex(docs, base_dir=tmp / "index").build()
        print(f"  rebuild with nothing changed: {time.perf_counter() - t:.2f} s ({again.embedded_chunks} embedded)")
        queries = [" ".join(rng.choice(words, 6)) for _ in range(60)]
        index.search(queries[0])
        total, embed = [], []
        embedder = get_embedder()
        for q in queries:
            t = time.perf_counter()
            index.search(q, k=3)
            total.append(time.perf_counter() - t)
            t = time.perf_counter()
            embedder.encode([q])
            embed.append(time.perf_counter() - t)
        print(f"  query incl. embedding: {ms(total)}   (embedding alone {ms(embed)}; "
              f"x{statistics.median(total) / statistics.median(embed):.2f} of it)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_verify(paths: list[Path], threshold: float, judges: list[str], sample: int, latency: float) -> None:
    """(v) the judge verifier on held-out pairs: served rates and cost, against the guard alone, same process."""
    import random

    sys.path.insert(0, str(HERE.parent / "tests"))
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    from helpers.llm_server import ScriptedLLMServer

    from pytest_llmeval.cache import verify as verify_mod

    embedder = get_embedder()
    embedder.encode(["warm up"])
    sets = {path.name: [json.loads(line) for line in path.read_text().splitlines() if line.strip()] for path in paths}
    band = threshold - verify_mod.VERIFY_MARGIN
    print(f"\n(v) --llm-semantic-verify=judge at threshold {threshold} (band from {band:.2f}, "
          f"at most {verify_mod.VERIFY_MAX} judge calls per lookup), each pair in its own partition")
    server = ScriptedLLMServer(default="no", latency=latency).start()
    try:
        for pairs in sets.values():
            for p in pairs:  # the oracle: each pair's true label, matched on the verifier's own prompt
                a, b = sorted((verify_mod.normalize(p["a"]), verify_mod.normalize(p["b"])))
                server.answer(f"A: {a}\nB: {b}\n", "yes" if p["label"] == "paraphrase" else "no",
                              model="oracle", case_sensitive=True)
        for judge in judges:
            for name, pairs in sets.items():
                if judge == "smollm2":
                    rng = random.Random(0)
                    pairs = rng.sample(pairs, min(sample, len(pairs)))
                model = "openai/oracle" if judge == "oracle" else "local/smollm2"
                label = (f"oracle judge (scripted server, {latency * 1000:.0f} ms)" if judge == "oracle"
                         else f"local/smollm2 (SmolLM2-135M, offline), random {len(pairs)} of the set")
                _verify_set(name, pairs, threshold, model, label, server, judge == "oracle")
    finally:
        server.stop()


def _verify_set(name: str, pairs: list[dict], threshold: float, model: str, label: str, server: object,
                rerun: bool) -> None:
    from pytest_llmeval.config.settings import Settings
    from pytest_llmeval.providers.runner import ModelRunner

    tmp = Path(tempfile.mkdtemp())
    try:
        runner = ModelRunner(Settings(cache_mode="semantic", semantic_verify="judge", judge_model=model,
                                      api_base=server.url, retries=0, cache_dir=tmp / "cache",  # type: ignore[attr-defined]
                                      results_path=tmp / "results.json", timeout=120))
        cache = runner.semantic
        judge = runner._semantic_verifier("unused")
        replies: list[tuple[str, str]] = []  # (the pair's label, the judge's reply)
        label_of = {tuple(sorted((p["a"], p["b"]))): p["label"] for p in pairs}

        def verify(new: str, cached: str) -> Any:
            verdict = judge(new, cached)
            replies.append((label_of.get(tuple(sorted((new, cached))), "other"), verdict.reply or ""))
            return verdict
        if model.startswith("local/"):  # load the weights before the clock starts (~15 s)
            runner.complete(model, [{"role": "user", "content": "Say yes."}], {"max_tokens": 2}, semantic=False)
        va = [cache.embed(p["a"]) for p in pairs]
        vb = [cache.embed(p["b"]) for p in pairs]
        for i, (p, v) in enumerate(zip(pairs, va, strict=True)):
            cache.add(partition_key(pair=i), p["a"], f"k{i}", vector=v)
        passes = []
        for verifier in (None, verify, *([verify] if rerun else [])):
            before = cache.stats.state()
            rows: dict[str, list[int]] = {}
            times = []
            for i, (p, v) in enumerate(zip(pairs, vb, strict=True)):
                t = time.perf_counter()
                hit = cache.lookup(partition_key(pair=i), p["b"], vector=v, verify=verifier)
                times.append(time.perf_counter() - t)
                r = rows.setdefault("paraphrase" if p["label"] == "paraphrase" else "change", [0, 0])
                r[0] += 1
                r[1] += hit is not None
            after = cache.stats.state()
            passes.append((rows, times, {k: after[k] - before[k] for k in after if k != "cost_usd"}))
        runner.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n  {name}: {label}")
    print(f"    {'':36} {'paraphrases served':>18} {'meaning changes served':>23} {'judge calls/lookup':>19} "
          f"{'lookup p50 / p95':>19}")
    names = ["guard alone (no verifier)", "guard + judge", "guard + judge again (verdicts kept)"]
    for title, (rows, times, stats) in zip(names, passes, strict=False):
        para, change = rows.get("paraphrase", [0, 0]), rows.get("change", [0, 0])
        n = para[0] + change[0]
        calls = stats.get("judge_calls", 0) / n if stats else 0.0
        print(f"    {title:36} {para[1]:>4}/{para[0]:<4} {para[1] / max(para[0], 1):>7.1%} "
              f"{change[1]:>6}/{change[0]:<4} {change[1] / max(change[0], 1):>9.1%}   {calls:>15.2f}"
              f"   {statistics.median(times) * 1000:7.1f} / {np.percentile(times, 95) * 1000:6.1f} ms")
    _, times0, _ = passes[0]
    _, times1, stats1 = passes[1]
    print(f"    judge: {stats1['judge_calls']} calls, {stats1['judge_errors']} errors or unreadable replies, "
          f"{stats1['prompt_tokens']} prompt + {stats1['completion_tokens']} completion tokens "
          f"({stats1['prompt_tokens'] / max(stats1['judge_calls'], 1):.0f} + "
          f"{stats1['completion_tokens'] / max(stats1['judge_calls'], 1):.1f} per call); "
          f"{stats1['hard_refusals']} lookups refused unasked on hard guard findings; added latency per lookup: "
          f"mean {(statistics.mean(times1) - statistics.mean(times0)) * 1000:.1f} ms")
    if stats1["judge_errors"]:  # what the replies say when read leniently (a yes/no anywhere in the first line)
        lenient: dict[str, list[int]] = {}
        for pair_label, reply in replies:
            words = _re.findall(r"[a-z]+", reply.lower().split("\n")[0])
            said = next((w for w in words if w in ("yes", "no")), "neither")
            row = lenient.setdefault("paraphrase" if pair_label == "paraphrase" else "change", [0, 0, 0])
            row[("yes", "no", "neither").index(said)] += 1
        print("    its replies read leniently (yes / no / neither): "
              + "; ".join(f"{k}: {v[0]} / {v[1]} / {v[2]}" for k, v in sorted(lenient.items()))
              + "; examples: " + ", ".join(repr(r) for _, r in replies[:3]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--chunks", type=int, default=10000)
    parser.add_argument("--pairs", type=Path, default=HERE / "semantic_pairs.jsonl")
    parser.add_argument("--threshold", type=float, default=semantic.DEFAULT_THRESHOLD)
    parser.add_argument("--fill", type=int, default=0, help="(b): other entries in each pair's partition")
    parser.add_argument("--grow", type=int, default=100000, help="(a2): entries before the lookup+add rounds")
    parser.add_argument("--only", choices=["lookup", "pairs", "index", "verify"], default=None)
    parser.add_argument("--judge", nargs="+", choices=["oracle", "smollm2"], default=["oracle", "smollm2"],
                        help="(v): the judges to measure")
    parser.add_argument("--sets", type=Path, nargs="+", default=[HERE / "semantic_pairs_independent.jsonl",
                                                                 HERE / "semantic_pairs_holdout2.jsonl"])
    parser.add_argument("--sample", type=int, default=40, help="(v): pairs per set shown to smollm2")
    parser.add_argument("--judge-latency", type=float, default=0.05, help="(v): the oracle's latency, seconds")
    args = parser.parse_args()
    if args.only == "verify":
        bench_verify(args.sets, args.threshold, args.judge, args.sample, args.judge_latency)
        return
    if args.only in (None, "lookup"):
        bench_lookup(args.sizes)
        bench_growing(args.grow)
    if args.only in (None, "pairs"):
        bench_pairs(args.pairs, args.threshold, args.fill)
    if args.only in (None, "index"):
        bench_index(args.chunks)


if __name__ == "__main__":
    main()
