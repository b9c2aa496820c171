"""DiffModel.edit / edit_many: wrong requests and options are one DiffModelError naming each, before generating."""

from __future__ import annotations

import pytest

from diffmodel.errors import DiffModelError
from diffmodel.infer import DiffModel, EditRequest, as_request


@pytest.fixture(scope="module")
def model(tiny_gpt2_dir) -> DiffModel:
    return DiffModel.from_pretrained(tiny_gpt2_dir)


def _error(call) -> str:
    with pytest.raises(DiffModelError) as err:
        call()
    return str(err.value)


class TestRequestFields:
    def test_a_tuple_field_that_is_not_text_is_refused_not_turned_into_its_repr(self):
        assert _error(lambda: as_request((None, "m", "a.py"))) == (
            "bad edit request: code (item 0 of the tuple) must be a string, got NoneType")
        assert _error(lambda: as_request((b"x = 1\n", "m", 7))) == (
            "bad edit request: code (item 0 of the tuple) must be a string, got bytes (decode bytes first, "
            "e.g. data.decode('utf-8')); name (item 2) must be a string, got int")

    def test_a_dict_field_names_its_key(self):
        assert _error(lambda: as_request({"path": 3, "code": "x\n", "message": "m"})) == (
            "bad edit request: 'path' must be a string, got int")

    def test_edit_with_none_for_the_code(self, model):
        assert _error(lambda: model.edit(None, "m", "a.py")) == (
            "cannot generate:\n  - request 0: bad edit request: code must be a string, got NoneType")

    def test_text_with_a_lone_surrogate(self, model):
        assert _error(lambda: model.edit("x = '\udcff'\n", "m", "a.py")) == (
            "cannot generate:\n  - request 0: bad edit request: code is not valid Unicode: a lone surrogate \\udcff at "
            "character 5 (text decoded with errors='surrogateescape'?); decode the file as UTF-8 text")

    def test_valid_requests_are_kept_as_they_are(self):
        request = EditRequest("", "Add a", "a.py")
        assert as_request(request) is request
        assert as_request(["x\n", "m", "b.py"]) == EditRequest("x\n", "m", "b.py")


class TestRequestList:
    def test_one_request_instead_of_a_list(self, model):
        want = ("cannot generate:\n  - requests must be a list of requests, got one request; "
                "for one file use edit(code, message, name) or edit_many([request])")
        assert _error(lambda: model.edit_many(("x\n", "m", "a.py"))) == want
        assert _error(lambda: model.edit_many({"name": "a.py", "before": "x\n", "message": "m"})) == want
        assert _error(lambda: model.edit_many(EditRequest("x\n", "m", "a.py"))) == want

    def test_every_bad_request_of_a_mixed_list_is_named_by_its_index(self, model):
        requests = [EditRequest("x\n", "m", "a.py"), ("x\n", None, "b.py"), {"name": "c.py", "code": "x\n", "message": "m"},
                    "d.py", ("x\n", "m")]
        assert _error(lambda: model.edit_many(requests, max_new_tokens=3)) == (
            "cannot generate:\n"
            "  - request 1: bad edit request: message (item 1) must be a string, got NoneType\n"
            "  - request 3: cannot read an edit request from str: give EditRequest, (code, message, name) or a dict\n"
            "  - request 4: cannot read an edit request from tuple: give EditRequest, (code, message, name) or a dict")


class TestOptionTypes:
    @pytest.mark.parametrize("constrained", [True, False])
    def test_wrong_types_are_named(self, model, constrained):
        text = _error(lambda: model.edit_many([("x\n", "m", "a.py")], num_samples="2", batch_size=2.0, temperature="0.5",
                                              top_k=1.5, seed="1", constrained=constrained))
        assert text == (
            "cannot generate:\n"
            "  - num_samples must be an integer, got str '2'\n"
            "  - batch_size must be an integer, got float 2.0\n"
            "  - top_k must be an integer, got float 1.5\n"
            "  - temperature must be a finite number, got str '0.5'\n"
            "  - seed must be an integer or None, got str '1'")

    @pytest.mark.parametrize("temperature", [float("nan"), float("inf")])
    def test_temperature_that_is_not_finite(self, model, temperature):
        assert _error(lambda: model.edit("x\n", "m", "a.py", temperature=temperature)) == (
            f"cannot generate:\n  - temperature must be a finite number, got float {temperature!r}")

    def test_negative_min_new_tokens(self, model):
        assert _error(lambda: model.edit("x\n", "m", "a.py", min_new_tokens=-1)) == (
            "cannot generate:\n  - min_new_tokens must be 0 (off) or more, got -1")

    def test_float_batch_size_used_to_break_only_plain_decoding(self, model):
        assert _error(lambda: model.edit("x\n", "m", "a.py", batch_size=2.0, constrained=False)) == (
            "cannot generate:\n  - batch_size must be an integer, got float 2.0")
