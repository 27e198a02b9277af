"""Browse a page at a time (issue 16): keyset pages in image id order, filters applied by the
database before the page is cut, the Next/Previous buttons of the page."""
from __future__ import annotations

from db.engine import session_scope
from db.models import ReviewAction
from db.review import claim_next, decide
from pipeline.classes import CLASSES
from pipeline.services.browse import BrowseFilters, browse_view
from tests.app_store import app_for, fill_store
from tests.conftest import both_backends, seed_images


@both_backends
def test_pages_follow_each_other_without_gaps_or_repeats(store, backend):
    ids = seed_images(store, {"cat": 7, "dog": 5}, text="A {label} photo number {i} on the road.")
    seen, after = [], 0
    while True:
        view = browse_view(store, filters=BrowseFilters(page_size=3, after_id=after))
        seen += list(view.items["image_id"])
        assert len(view.items) <= 3
        if view.next_after_id is None:
            break
        after = view.next_after_id
    assert seen == sorted(ids)
    dogs = browse_view(store, filters=BrowseFilters(labels=("dog",), page_size=4))
    assert list(dogs.items["image_id"]) == ids[7:11] and dogs.next_after_id == ids[10]
    last = browse_view(store, filters=BrowseFilters(labels=("dog",), page_size=4, after_id=ids[10]))
    assert list(last.items["image_id"]) == ids[11:] and last.next_after_id is None
    # the per-class states count every item, not only the page
    assert dict(zip(dogs.states["label"], dogs.states["n"])) == {"cat": 7, "dog": 5}


@both_backends
def test_text_length_and_edit_rates_are_computed_by_the_database(store, backend):
    seed_images(store, {"cat": 3, "ship": 2}, text="A {label} photo {i}.")
    edited = None
    with session_scope(store) as s:
        while (item := claim_next(s, reviewer="ann")) is not None:
            caption = None if edited else "A tabby CAT asleep."
            decide(s, image_id=item.image_id, reviewer="ann", expected_version=item.version, caption=caption,
                   action=ReviewAction.edit_approve if caption else ReviewAction.approve)
            edited = edited or (item.image_id, item.label)
    view = browse_view(store, filters=BrowseFilters(text="tabby cat"))
    assert list(view.items["image_id"]) == [edited[0]]
    short = browse_view(store, filters=BrowseFilters(max_chars=len("A ship photo 1.")))
    assert len(short.items) == 4 and edited[0] not in set(short.items["image_id"])
    rates = view.rates.set_index("label")
    assert dict(rates["approved"]) == {"cat": 3, "ship": 2}
    assert dict(rates["edited"]) == {"cat": int(edited[1] == "cat"), "ship": int(edited[1] == "ship")}
    assert rates.loc[edited[1], "edit_rate"] == 1 / (3 if edited[1] == "cat" else 2)


def test_the_page_has_next_and_previous_buttons(tmp_path, monkeypatch):
    data = tmp_path / "data"
    fill_store(data, per_class=11, classes=CLASSES)  # 110 items: two pages of 100
    at = app_for(data, monkeypatch)
    at.run()
    at.switch_page("app_pages/browse.py").run()
    assert not at.exception, at.exception
    first = list(at.dataframe[-1].value["image_id"])
    assert len(first) == 100 and at.button(key="browse_prev").disabled
    at.button(key="browse_next").click().run()
    second = list(at.dataframe[-1].value["image_id"])
    assert len(second) == 10 and min(second) > max(first) and at.button(key="browse_next").disabled
    at.button(key="browse_prev").click().run()
    assert list(at.dataframe[-1].value["image_id"]) == first
    at.button(key="browse_next").click().run()
    at.multiselect(key="browse_labels").set_value(["dog"]).run()  # a new filter starts at page one
    assert len(at.dataframe[-1].value) == 11 and at.button(key="browse_prev").disabled


@both_backends
def test_a_filter_matching_few_items_looks_at_a_bounded_window_per_page(store, backend, monkeypatch):
    import pipeline.services.browse as browse

    ids = seed_images(store, {"cat": 9, "dog": 4}, text="A {label} photo {i}.")
    with session_scope(store) as s:  # two rare captions, far apart
        for image_id, caption in ((ids[1], "A rare zebra."), (ids[11], "Another rare zebra.")):
            decide(s, image_id=image_id, reviewer="ann", expected_version=1, caption=caption,
                   action=ReviewAction.edit_approve)
    monkeypatch.setattr(browse, "SCAN_ROWS", 4)
    found, after, pages = [], 0, 0
    while after is not None:
        view = browse_view(store, filters=BrowseFilters(text="ZEBRA", page_size=3, after_id=after))
        found += list(view.items["image_id"])
        assert view.searched_to is None or len(view.items) < 3
        after, pages = view.next_after_id, pages + 1
    assert found == [ids[1], ids[11]] and pages == 4  # 13 items, 4 looked at per page
    first = browse_view(store, filters=BrowseFilters(text="zebra", page_size=3))
    assert first.searched_to == ids[3] and first.next_after_id == ids[3]
    nothing = browse_view(store, filters=BrowseFilters(labels=("dog",), text="zebra", page_size=3))
    assert list(nothing.items["image_id"]) == [ids[11]] and nothing.next_after_id is None
    # the index-only filters are not bounded: a whole page of dogs at once
    dogs = browse_view(store, filters=BrowseFilters(labels=("dog",), page_size=10))
    assert list(dogs.items["image_id"]) == ids[9:] and dogs.searched_to is None


def test_the_page_says_how_far_a_sparse_filter_searched(tmp_path, monkeypatch):
    import pipeline.services.browse as browse

    data = tmp_path / "data"
    ids = fill_store(data, per_class=11, classes=CLASSES)  # 110 items, ids in class order
    monkeypatch.setattr(browse, "SCAN_ROWS", 40)
    at = app_for(data, monkeypatch)
    at.run()
    at.switch_page("app_pages/browse.py").run()
    at.text_input(key="browse_text").input("no caption says this").run()
    assert not at.exception, at.exception
    assert len(at.dataframe[-1].value) == 0 and not at.button(key="browse_next").disabled
    said = " ".join(c.value for c in at.caption)
    assert f"up to id {sorted(sum(ids.values(), []))[39]}" in said  # the 40th item looked at
    at.button(key="browse_next").click().run()
    at.button(key="browse_next").click().run()  # items 81-110: fewer than 40 left, so the last page
    assert at.button(key="browse_next").disabled and "up to id" not in " ".join(c.value for c in at.caption)
    assert any("Items 0–0" in h.value for h in at.subheader)
