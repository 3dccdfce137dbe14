"""Answers a shop can render, through the HTTP API (FastAPI TestClient) on the tiny run: each recommended item
carries its title, text and the item file's text fields; ``exclude_seen`` drops the history's items and fills the
list from the beam."""
from __future__ import annotations

from genrecedit.data.atomic import read_atomic
from genrecedit.data.dataset import RecDataset
from genrecedit.serving.metadata import ItemMetadata
from serving_helpers import HISTORIES


def test_the_item_files_text_fields_are_kept_for_display(tmp_path):
    (tmp_path / "m.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\t1\t1\nu1\t2\t2\n")
    (tmp_path / "m.item").write_text("item_id:token\tmovie_title:token_seq\tyear:token\tclass:token_seq\n"
                                     "1\tToy Story \t1995\tAnimation Comedy\n2\tHeat\t\tAction\n")
    ds = read_atomic(tmp_path / "m.inter", tmp_path / "m.item")
    assert list(ds.item_fields.columns) == ["movie_title", "year", "class"]
    assert ds.items.loc["2", "text"] == "Heat | Action"
    meta = ItemMetadata(ds)
    assert meta.base("1") == {"title": "Toy Story", "text": "Toy Story | 1995 | Animation Comedy",
                              "fields": {"movie_title": "Toy Story", "year": "1995", "class": "Animation Comedy"}}
    assert meta.base("2")["fields"] == {"movie_title": "Heat", "year": "", "class": "Action"}
    without = ItemMetadata(RecDataset("x", ds.interactions, ds.items))  # a reader with no fields (Amazon 2023)
    assert without.base("1") == {"title": "Toy Story", "text": "Toy Story | 1995 | Animation Comedy", "fields": {}}
    assert ItemMetadata.added("Space Racer | Switch") == {"title": "Space Racer", "text": "Space Racer | Switch",
                                                          "fields": {}}


def test_recommended_items_carry_their_metadata(client):
    items = client.post("/recommend", json={"history": ["i30", "i31"]}).json()["items"]
    dataset = client.app.state.service.run.prepared.dataset
    for x in items:
        text = dataset.items.loc[x["item_id"], "text"]
        assert x["text"] == text and x["title"] == text and x["fields"] == {"title": text}
        assert client.get(f"/items/{x['item_id']}").json()["title"] == text
    added = client.post("/items?wait=true", json={"items": [{"item_id": "n-3", "text": "space space saga | Switch"}]})
    assert added.status_code == 200, added.text
    item = client.get("/items/n-3").json()
    assert (item["title"], item["text"], item["fields"]) == ("space space saga", "space space saga | Switch", {})
    for history in HISTORIES + [added.json()["items"][0]["probe_history"]]:
        for x in client.post("/recommend", json={"history": history}).json()["items"]:
            if x["item_id"] == "n-3":
                assert x["title"] == "space space saga" and x["fields"] == {}
            else:
                assert x["fields"] == {"title": x["text"]}


def test_exclude_seen_drops_the_history_and_fills_from_the_beam(client):
    beam = client.app.state.service.decode.beam
    found = 0
    for topic in range(8):
        history = [f"i{topic}{n}" for n in range(6)]
        full = [x["item_id"] for x in client.post("/recommend", json={"history": history, "k": beam}).json()["items"]]
        seen = [i for i in full if i in history]
        if not seen:
            continue
        found += 1
        unseen = [i for i in full if i not in history]
        for k in (3, beam):
            r = client.post("/recommend", json={"history": history, "k": k, "exclude_seen": True})
            got = [x["item_id"] for x in r.json()["items"]]
            assert got == unseen[:k] and not set(got) & set(history)
        plain = [x["item_id"] for x in client.post("/recommend", json={"history": history, "k": 3}).json()["items"]]
        assert plain == full[:3]  # without the flag nothing is dropped
    assert found, "no history whose beam holds one of its items"
    new_user = client.post("/recommend", json={"history": [], "exclude_seen": True}).json()["items"]
    assert len(new_user) == client.app.state.service.decode.k
