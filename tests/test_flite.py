"""The flite ABX set: phone-time parsing, item construction, and a real synthesis whose
raw log-mel features must discriminate phones far better than chance.

Needs flite, fetched by `bash tools/fetch_flite.sh tools/flite` (or SQVAE_FLITE=DIR)."""

import numpy as np
import pytest
import soundfile as sf

from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.audio import load_audio
from sqvae_speech.data.datadir import read_datadir
from sqvae_speech.data.featstore import write_featstore
from sqvae_speech.data.features import logmel
from sqvae_speech.metrics.alignment import check_coverage, read_alignment
from sqvae_speech.zerospeech.abx import (
    abx_from_tokens,
    extract_tokens,
    open_features,
    read_items,
)
from sqvae_speech.zerospeech.flite import (
    FliteError,
    Phone,
    find_flite,
    item_rows,
    make_flite_abx_set,
    parse_psdur,
    read_sentences,
)


@pytest.fixture(scope="module")
def flite():
    try:
        return find_flite()
    except FliteError as e:
        pytest.fail(f"{e}\n(`make test` fetches it; by hand: `bash tools/fetch_flite.sh tools/flite`)")


def test_parse_psdur():
    phones = parse_psdur("pau:0.184 dh:0.236 ax:0.270 k:0.388\n")
    assert phones == [Phone("pau", 0.0, 0.184), Phone("dh", 0.184, 0.236), Phone("ax", 0.236, 0.270),
                      Phone("k", 0.270, 0.388)]
    with pytest.raises(FliteError, match="unexpected token 'Voices'"):
        parse_psdur("Voices available: kal")
    with pytest.raises(FliteError, match="go backwards"):
        parse_psdur("a:0.5 b:0.3")


def test_item_rows_triphones_and_silence_context():
    ph = [Phone("pau", 0.0, 0.3), Phone("k", 0.3, 0.36), Phone("ae", 0.36, 0.46), Phone("t", 0.46, 0.48),
          Phone("s", 0.48, 0.6), Phone("pau", 0.6, 0.9)]
    rows = item_rows("u1", "slt", ph, duration=0.9)
    assert rows == [
        ("u1", 0.25, 0.46, "k", "pau", "ae", "slt"),  # pau context clipped to 50 ms before the phone
        ("u1", 0.3, 0.48, "ae", "k", "t", "slt"),  # 't' (20 ms) is too short to be a target
        ("u1", 0.46, pytest.approx(0.65), "s", "t", "pau", "slt"),
    ]
    assert [r[3] for r in item_rows("u1", "slt", ph, duration=0.62)] == ["k", "ae"]  # ends past the audio


def test_flite_voices_and_a_real_abx_set(flite, tmp_path):
    assert {"awb", "rms", "slt", "kal16"} <= set(flite.voices())
    sentences = read_sentences()
    assert 40 <= len(sentences) <= 60
    s = make_flite_abx_set(tmp_path / "set", voices=("awb", "slt"), sentences=sentences[:12], progress=False)
    assert s.utterances == 24 and s.items > 400
    dd = read_datadir(tmp_path / "set" / "data")
    assert dd.speakers == ["awb", "slt"] and len(dd.utterances) == 24
    info = sf.info(dd.wav_scp["slt_s001"])
    assert info.samplerate == 16000 and info.channels == 1
    items = read_items(tmp_path / "set" / "abx.item")
    assert set(items.speaker) == {"awb", "slt"} and "pau" not in set(items.phone)
    assert (np.array(items.offset) - np.array(items.onset) >= 0.03).all()
    assert (tmp_path / "set" / "text").read_text().splitlines()[0] == f"awb_s001 {sentences[0]}"
    # phones.ctm (Kaldi CTM) covers every utterance and ends within its audio
    ali = read_alignment(tmp_path / "set" / "phones.ctm")
    assert set(ali) == set(dd.utterances)
    check_coverage(ali, {u: sf.info(dd.wav_scp[u]).duration for u in dd.utterances}, "phones.ctm", tolerance=0.001)
    assert ali["awb_s001"][0].phone == "pau" and ali["awb_s001"][0].start == 0.0

    cfg = FeatureConfig()
    store = write_featstore(tmp_path / "feats", [(u, dd.utt2spk[u], logmel(load_audio(dd.wav_scp[u], 16000), 16000, cfg))
                                                 for u in dd.utterances], cfg)
    tokens, _ = extract_tokens(items, open_features(store.path))
    r = abx_from_tokens(items, tokens, device="cpu")
    within, across = r["within"]["error"], r["across"]["error"]
    assert r["within"]["triplets"] > 100 and r["across"]["triplets"] > 300
    # raw log-mel spectra tell English phones apart far above chance, better within a voice than across
    assert within < across < 40.0
