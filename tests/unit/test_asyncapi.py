"""Each service's AsyncAPI document is generated from its code and, together, the six cover
every event type of CONTRACT.md, published or consumed."""

from contract_doc import documented_types_by_topic

from shared.asyncapi import SERVICE_MODULES, event_types_in, service_documents


def test_every_contract_event_type_appears_in_the_services_documents():
    docs = service_documents()
    assert set(docs) == set(SERVICE_MODULES)
    covered = set().union(*(event_types_in(doc) for doc in docs.values()))
    documented = set().union(*documented_types_by_topic().values())
    assert len(documented) >= 38
    assert not documented - covered, f"not in any AsyncAPI document: {sorted(documented - covered)}"


def test_every_contract_topic_is_a_channel_of_some_service():
    docs = service_documents()
    addresses = {ch["address"] for doc in docs.values() for ch in doc["channels"].values()}
    for heading in documented_types_by_topic():
        if heading == "pms-sync.<integration>.v1":
            assert {"pms-sync.praktika.v1", "pms-sync.core-practice.v1"} <= addresses
        else:
            assert heading in addresses, heading


def test_documents_are_asyncapi_3_with_resolvable_message_refs():
    for name, doc in service_documents().items():
        assert doc["asyncapi"] == "3.0.0" and doc["info"]["title"] == name
        for op in doc["operations"].values():
            channel_id = op["channel"]["$ref"].rsplit("/", 1)[1]
            channel = doc["channels"][channel_id]
            for ref in op["messages"]:
                assert ref["$ref"].rsplit("/", 1)[1] in channel["messages"]
        assert f"dlq.{name}.v1" in {ch["address"] for ch in doc["channels"].values()}
