"""What the OPC UA connector subscribes to, from the site, and the settings it refuses."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import ua

from connectors.opcua import OpcUaConnector
from connectors.opcua_plan import (
    data_change_filter,
    plan_subscriptions,
    security_settings,
)
from pipeline import PROJECT_ROOT
from pipeline.errors import ConfigError
from pipeline.site import Deadband, DeadbandType, Site, load_site, parse_site
from pipeline.site.sources import OpcUaSecurity, SecurityMode, SecurityPolicy

DEMO = PROJECT_ROOT / "topologies" / "sites" / "demo-plant.yaml"


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(DEMO)


def _demo_variant(change: Any) -> Site:
    data = yaml.safe_load(DEMO.read_text())
    change(data)
    return parse_site(yaml.safe_dump(data, sort_keys=False))


def test_demo_source_is_one_subscription_with_an_item_per_signal(site: Site) -> None:
    plans = plan_subscriptions(site.assets_fed_by("opcua-line1"))
    assert len(plans) == 1
    plan = plans[0]
    assert plan.publishing_interval == timedelta(milliseconds=500)
    assert len(plan.signals) == 4 * 8
    assert len({s.handle for s in plan.signals}) == len(plan.signals)
    params = plan.parameters()
    assert params.RequestedPublishingInterval == 500.0
    assert params.RequestedMaxKeepAliveCount == 10  # a keep-alive every 5 s when idle
    assert params.RequestedLifetimeCount >= 3 * params.RequestedMaxKeepAliveCount


def test_items_carry_node_ids_sampling_queue_and_deadband(site: Site) -> None:
    plan = plan_subscriptions(site.assets_fed_by("opcua-line1"))[0]
    requests = {
        (s.asset_id, s.signal): r for s, r in zip(plan.signals, plan.item_requests(3), strict=True)
    }
    speed = requests[("cnc-01", "spindle_speed")]
    assert speed.ItemToMonitor.NodeId == ua.NodeId("line-1/cnc-01/spindle_speed", 3)
    assert speed.RequestedParameters.SamplingInterval == 100.0
    assert speed.RequestedParameters.QueueSize == 6  # five samples per publish, plus one
    flt = speed.RequestedParameters.Filter
    assert flt.DeadbandType == ua.DeadbandType.Absolute
    assert flt.DeadbandValue == 5.0
    assert flt.Trigger == ua.DataChangeTrigger.StatusValue

    temperature = requests[("cnc-01", "spindle_temperature")]
    assert temperature.RequestedParameters.SamplingInterval == 1000.0
    assert temperature.RequestedParameters.QueueSize == 2
    no_deadband = temperature.RequestedParameters.Filter
    assert no_deadband.DeadbandType == ua.DeadbandType.None_
    assert no_deadband.Trigger == ua.DataChangeTrigger.StatusValueTimestamp

    state = requests[("cnc-02", "machine_state")]
    assert state.ItemToMonitor.NodeId == ua.NodeId("line-1/cnc-02/Status/StateCode", 3)
    retrofit = requests[("cnc-04", "spindle_speed")]
    assert retrofit.ItemToMonitor.NodeId == ua.NodeId("Retrofit/cnc-04/Spindle.Speed", 3)
    unfiltered = plan.item_request(plan.signals[0], 3, with_filter=False)
    assert not isinstance(unfiltered.RequestedParameters.Filter, ua.DataChangeFilter)


def test_percent_deadband_filter() -> None:
    flt = data_change_filter(Deadband(type=DeadbandType.PERCENT, value=2))
    assert flt.DeadbandType == ua.DeadbandType.Percent
    assert flt.DeadbandValue == 2.0


def test_one_subscription_per_publishing_interval() -> None:
    def change(data: dict[str, Any]) -> None:
        data["asset_types"]["cnc"]["opcua"]["publishing_interval"] = "1s"
        for asset in data["assets"]:
            if asset["id"] == "conv-01":
                asset["source"] = "opcua-line1"

    site = _demo_variant(change)
    plans = plan_subscriptions(site.assets_fed_by("opcua-line1"))
    assert [p.publishing_interval for p in plans] == [
        timedelta(milliseconds=500),
        timedelta(seconds=1),
    ]
    assert {s.asset_id for s in plans[0].signals} == {"conv-01"}
    assert {s.asset_id for s in plans[1].signals} == {"cnc-01", "cnc-02", "cnc-03", "cnc-04"}
    handles = [s.handle for p in plans for s in p.signals]
    assert len(set(handles)) == len(handles)


def test_connector_selects_assets_and_endpoint(site: Site) -> None:
    connector = OpcUaConnector(site, "opcua-line1")
    assert connector.kind == "opcua"
    assert connector.endpoint == "opc.tcp://127.0.0.1:4840/twinline"
    assert [a.id for a in connector.assets] == ["cnc-01", "cnc-02", "cnc-03", "cnc-04"]
    narrowed = OpcUaConnector(
        site, "opcua-line1", assets=["cnc-02"], endpoint="opc.tcp://10.0.0.5:4841/plc"
    )
    assert [a.id for a in narrowed.assets] == ["cnc-02"]
    assert narrowed.endpoint == "opc.tcp://10.0.0.5:4841/plc"
    assert len(narrowed.plans[0].signals) == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source_id": "nope"}, "no source"),
        ({"source_id": "modbus-gw1"}, "not OPC UA"),
        ({"assets": ["cnc-09"]}, "cannot read"),
        ({"assets": ["pump-01"]}, "cannot read"),
        ({"endpoint": "http://127.0.0.1:4840"}, "opc.tcp"),
        ({"security": {"mode": "SignAndEncrypt", "policy": "Basic256Sha256"}}, "security"),
        ({"security": {"modus": "Sign"}}, "unknown OPC UA security"),
    ],
)
def test_connector_refuses_bad_settings(site: Site, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"source_id": "opcua-line1", **kwargs}
    with pytest.raises(ConfigError) as caught:
        OpcUaConnector(site, **args)
    assert message in " ".join([str(caught.value), *caught.value.problems])


def test_asset_fed_by_another_source_is_named(site: Site) -> None:
    with pytest.raises(ConfigError) as caught:
        OpcUaConnector(site, "opcua-line1", assets=["pump-01"])
    assert caught.value.problems == ["asset 'pump-01' is fed by modbus-gw1, not opcua-line1"]


def test_security_defaults_and_override(tmp_path: Path) -> None:
    default = security_settings(OpcUaSecurity())
    assert not default.enabled
    assert default.describe() == "None/None"
    secured = security_settings(
        OpcUaSecurity(),
        {
            "mode": "SignAndEncrypt",
            "policy": "Basic256Sha256",
            "certificate": tmp_path / "cert.der",
            "private_key": tmp_path / "key.pem",
        },
    )
    assert secured.enabled
    assert secured.mode is SecurityMode.SIGN_AND_ENCRYPT
    assert secured.policy is SecurityPolicy.BASIC256SHA256
    assert secured.message_mode == ua.MessageSecurityMode.SignAndEncrypt
    assert secured.policy_class.URI.endswith("#Basic256Sha256")
    assert secured.certificate == tmp_path / "cert.der"
