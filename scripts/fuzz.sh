#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang + ASan + UBSan) and runs each for SECONDS (default 30), seeded from
# the fixtures ($XPO_FIXTURES_DIR, default ../shared/fixtures). Corpora grow in build-fuzz/corpus/<target>;
# findings are written to build-fuzz/findings/ and make the script fail (their report is printed, for CI logs).
# Inputs that once failed live in fuzz/regressions/<target>/ and are replayed first, as part of each corpus.
#   bash scripts/fuzz.sh [SECONDS]          e.g. bash scripts/fuzz.sh 600 for the 10-minute runs
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
fixtures=${XPO_FIXTURES_DIR:-$(pwd)/../shared/fixtures}
command -v clang++ >/dev/null || { echo "fuzz: needs clang (apt-get install clang)" >&2; exit 1; }
CXX=clang++ cmake -S fuzz -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz
mkdir -p build-fuzz/findings
seed() {  # seed TARGET FILE... : copy fixture files into the target's corpus (prefixing a mode byte if given)
  local target=$1 prefix=$2; shift 2
  mkdir -p "build-fuzz/corpus/$target"
  for f in "$@"; do
    [ -f "$f" ] || { echo "fuzz: fixture missing: $f" >&2; exit 1; }
    { printf "%s" "$prefix"; cat "$f"; } > "build-fuzz/corpus/$target/seed-$(basename "$(dirname "$f")")-$(basename "$f")"
  done
}
# chat templates: the fixtures' templates (tokenizer_config.json's and chat_template.jinja files, the real families
# of realworld/ among them) and the hand-made ones of fuzz/seeds/chat_template (macros, call/filter blocks, formatting)
mkdir -p build-fuzz/corpus/chat_template
python3 - "$fixtures" build-fuzz/corpus/chat_template <<'PY'
import json, sys, pathlib
root, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for i, p in enumerate(sorted(root.glob("**/tokenizer_config.json"))):
    t = json.loads(p.read_text()).get("chat_template")
    if isinstance(t, str): (out / f"seed-{i}.jinja").write_text(t)
for i, p in enumerate(sorted(root.glob("**/chat_template.jinja"))):
    (out / f"seed-file-{i}.jinja").write_bytes(p.read_bytes())
PY
cp fuzz/seeds/chat_template/*.jinja build-fuzz/corpus/chat_template/
seed tokenizer "0" "$fixtures/models/tiny-qwen2/tokenizer.json"
# every fixture tokenizer.json (byte-level BPE, SentencePiece-style BPE, Unigram), shrunk under -max_len: the same
# normalizer / pre-tokenizer / decoder / post-processor and added tokens, the first pieces of the vocabulary and the
# merges among them (a Precompiled charsmap too large to fit is replaced by an empty one)
python3 - "$fixtures" build-fuzz/corpus/tokenizer <<'PY'
import json, sys, pathlib
root, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def shrink_normalizer(n):
    if isinstance(n, dict):
        if n.get("type") == "Precompiled" and len(n.get("precompiled_charsmap") or "") > 20000: n = dict(n, precompiled_charsmap="")
        if "normalizers" in n: n = dict(n, normalizers=[shrink_normalizer(x) for x in n["normalizers"]])
    return n
for i, p in enumerate(sorted(root.glob("**/tokenizer.json"))):
    j = json.loads(p.read_text(encoding="utf-8"))
    m = j.get("model", {})
    if isinstance(m.get("vocab"), list):
        m["vocab"] = m["vocab"][:400]
        if isinstance(m.get("unk_id"), int) and m["unk_id"] >= len(m["vocab"]): m["unk_id"] = 0
    elif isinstance(m.get("vocab"), dict):
        keep = {t: k for t, k in m["vocab"].items() if k < 400 or t.startswith("<0x")}
        m["vocab"] = keep
        pairs = [x.split(" ", 1) if isinstance(x, str) else x for x in m.get("merges", [])]
        m["merges"] = [[a, b] for a, b in pairs if a in keep and b in keep and a + b in keep][:400]
    j["normalizer"] = shrink_normalizer(j.get("normalizer"))
    (out / f"seed-json-{i}-{p.parent.name}.json").write_bytes(b"0" + json.dumps(j, ensure_ascii=False).encode("utf-8"))
# hand-made: the components no fixture uses (WordPiece, WordLevel, BertNormalizer, BertPreTokenizer, ...)
(out / "seed-json-wordpiece.json").write_text("0" + json.dumps({
    "model": {"type": "WordPiece", "unk_token": "[UNK]", "max_input_chars_per_word": 20,
              "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "hello": 3, "##s": 4, "wor": 5, "##ld": 6, "!": 7}},
    "added_tokens": [{"id": 1, "content": "[CLS]", "special": True}, {"id": 2, "content": "[SEP]", "special": True}],
    "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "lowercase": True},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "BertPreTokenizer"}, {"type": "Digits", "individual_digits": True},
                                                            {"type": "Punctuation", "behavior": "Contiguous"}]},
    "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 2], "cls": ["[CLS]", 1]},
    "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True}}))
(out / "seed-json-wordlevel.json").write_text("0" + json.dumps({
    "model": {"type": "WordLevel", "unk_token": "<unk>", "vocab": {"<unk>": 0, "a": 1, "b": 2}},
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "StripAccents"}, {"type": "Lowercase"},
                                                       {"type": "Strip", "strip_left": True, "strip_right": False}]},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, {"type": "CharDelimiterSplit", "delimiter": "-"},
                                                            {"type": "Whitespace"}]},
    "post_processor": {"type": "RobertaProcessing", "sep": ["b", 2], "cls": ["a", 1]},
    "decoder": {"type": "BPEDecoder", "suffix": "</w>"}}))
# texts: every case of the fixtures' tokenizer case files, and the PairRM reference strings
texts = []
for c in sorted(root.glob("**/cases.jsonl")):
    texts += [json.loads(l)["text"] for l in open(c, encoding="utf-8") if l.strip() and "text" in json.loads(l)]
for r in sorted(root.glob("**/tokenizer_reference.json")):
    texts += [s["text"] for s in json.loads(r.read_text(encoding="utf-8")).get("strings", [])]
for i, t in enumerate(texts):
    (out / f"seed-text-{i}").write_bytes(b"1" + t.encode("utf-8", "surrogatepass"))
PY
mkdir -p build-fuzz/corpus/jsonl
printf '{"prompt": "The sky is"}\n{"prompt": "x", "id": 3}\n' > build-fuzz/corpus/jsonl/seed-standard.jsonl
printf '{"prompt": [{"role": "user", "content": "Hi"}], "chat_template_kwargs": {"a": 1}}\n\n' > build-fuzz/corpus/jsonl/seed-chat.jsonl
# safetensors: each fixture checkpoint's header with its tensors shrunk to a few elements (the files themselves
# are larger than -max_len), so that seeds are whole, valid files
mkdir -p build-fuzz/corpus/safetensors
python3 - build-fuzz/corpus/safetensors "$fixtures"/models/*/*.safetensors <<'PY'
import json, struct, sys, pathlib
sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
out = pathlib.Path(sys.argv[1])
for i, name in enumerate(sys.argv[2:]):
    raw = open(name, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    small, offset = {}, 0
    for key, value in header.items():
        if key == "__metadata__":
            small[key] = value
            continue
        shape = [min(d, 2) for d in value["shape"]][:2]
        count = 1
        for d in shape: count *= d
        small[key] = {"dtype": value["dtype"], "shape": shape, "data_offsets": [offset, offset + count * sizes[value["dtype"]]]}
        offset += count * sizes[value["dtype"]]
        if len(small) > 6: break
    text = json.dumps(small).encode()
    (out / f"seed-{i}.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + bytes(offset))
PY
# configuration readers: '0' XPOConfig JSON, '1' a model's config.json, '2' flag lines [NUL --config file]
mkdir -p build-fuzz/corpus/config
printf '0{"beta": [0.1, 0.05], "alpha": 1e-5, "loss_type": "ipo", "save_total_limit": null, "min_p": 0.1, "device": "cuda:1"}' \
  > build-fuzz/corpus/config/seed-xpo.json
seed config "1" "$fixtures"/models/*/config.json
printf '2--beta\n0.2,0.1\n--flag\n--names\na\nb\n--rate=none\n--count\n7\n--learning_rate\n1e-6' > build-fuzz/corpus/config/seed-flags
printf '2--max_steps\n3\0{"name": "y", "names": ["p", "q"], "temperature": 0.5, "rate": null}' > build-fuzz/corpus/config/seed-flags-file
# past findings, replayed on every run
for dir in fuzz/regressions/*/; do
  target=$(basename "$dir")
  mkdir -p "build-fuzz/corpus/$target"
  cp "$dir"* "build-fuzz/corpus/$target/"
done
# text mode encodes with each real tokenizer listed: byte-level BPE, SentencePiece-style BPE, Unigram
XPO_FUZZ_TOKENIZER="$fixtures/tokenizers/qwen/tokenizer.json"
for f in "$fixtures"/realworld/*/tokenizer.json "$fixtures/judges/tiny-pairrm/tokenizer.json"; do
  [ -f "$f" ] && XPO_FUZZ_TOKENIZER="$XPO_FUZZ_TOKENIZER:$f"
done
export XPO_FUZZ_TOKENIZER
status=0
for target in safetensors tokenizer chat_template jsonl config; do
  echo "fuzz: $target for ${seconds}s"
  if ! ./build-fuzz/fuzz_$target "build-fuzz/corpus/$target" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 \
       -artifact_prefix="build-fuzz/findings/$target-" -print_final_stats=1 2> "build-fuzz/$target.log"; then
    echo "fuzz: $target FOUND something: see build-fuzz/$target.log and build-fuzz/findings/" >&2
    # the report: the sanitizer's or libFuzzer's error, the top of its stack, the input saved
    grep -E -A24 "^==[0-9]+== ?ERROR|^ERROR: libFuzzer|uncaught exception|terminate called" "build-fuzz/$target.log" | head -40 >&2 || true
    grep -E "^artifact_prefix|Test unit written to|^Base64:" "build-fuzz/$target.log" >&2 || true
    status=1
  fi
  grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "build-fuzz/$target.log" | tail -2
done
exit $status
