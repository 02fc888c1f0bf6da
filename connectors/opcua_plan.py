"""What the OPC UA connector subscribes to, worked out from the site before connecting.

One subscription per distinct publishing interval among the selected assets (usually one),
one monitored item per signal with the site's sampling interval and deadband. Security
settings come from the source, optionally overridden. Pure: tested without a server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.crypto import security_policies
from pydantic import ValidationError

from pipeline.errors import ConfigError
from pipeline.site import (
    Asset,
    Deadband,
    DeadbandType,
    OpcUaAssetBinding,
    OpcUaSignalBinding,
)
from pipeline.site.sources import OpcUaSecurity, SecurityMode, SecurityPolicy

KEEPALIVE_TARGET = timedelta(seconds=5)
"""About how often an idle subscription still sends a (keep-alive) publish response."""
LIFETIME_KEEPALIVES = 4
"""Keep-alive periods without publish requests after which the server drops the
subscription (the spec asks for at least 3); a lost connector's subscriptions go soon."""
MAX_QUEUE_SIZE = 100

_POLICIES: dict[SecurityPolicy, type[security_policies.SecurityPolicy]] = {
    SecurityPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
    SecurityPolicy.AES128_SHA256_RSAOAEP: security_policies.SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicy.AES256_SHA256_RSAPSS: security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES = {
    SecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    SecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}


@dataclass(frozen=True, slots=True)
class MonitoredSignal:
    """One signal of one asset, as a monitored item."""

    handle: int
    """Client handle: notifications name the monitored item by it."""
    asset_id: str
    signal: str
    binding: OpcUaSignalBinding

    def node_id(self, namespace_index: int) -> ua.NodeId:
        return ua.NodeId.from_string(self.binding.node_id(namespace_index))


@dataclass(frozen=True)
class SubscriptionPlan:
    """One subscription: a publishing interval and the signals published at it."""

    publishing_interval: timedelta
    signals: tuple[MonitoredSignal, ...]

    @property
    def publishing_ms(self) -> float:
        return self.publishing_interval / timedelta(milliseconds=1)

    @property
    def keepalive_count(self) -> int:
        return max(1, math.ceil(KEEPALIVE_TARGET / self.publishing_interval))

    @property
    def keepalive_period(self) -> timedelta:
        """Longest silence of a healthy subscription (publishing interval × keep-alive count)."""
        return self.publishing_interval * self.keepalive_count

    def parameters(self) -> ua.CreateSubscriptionParameters:
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = self.publishing_ms
        params.RequestedMaxKeepAliveCount = self.keepalive_count
        params.RequestedLifetimeCount = self.keepalive_count * LIFETIME_KEEPALIVES
        params.MaxNotificationsPerPublish = 0  # no limit: a publish cycle is one batch
        params.PublishingEnabled = True
        params.Priority = 0
        return params

    def queue_size(self, signal: MonitoredSignal) -> int:
        """Samples the server keeps per item between publishes: every sample of a cycle,
        plus one for jitter, so a fast signal is not thinned to one value per publish."""
        sampling = signal.binding.sampling_interval
        per_cycle = math.ceil(self.publishing_interval / sampling) if sampling else 1
        return min(MAX_QUEUE_SIZE, per_cycle + 1)

    def item_requests(
        self, namespace_index: int, *, with_filters: bool = True
    ) -> list[ua.MonitoredItemCreateRequest]:
        """The monitored item requests, in the order of `signals`."""
        return [
            self.item_request(s, namespace_index, with_filter=with_filters) for s in self.signals
        ]

    def item_request(
        self, signal: MonitoredSignal, namespace_index: int, *, with_filter: bool = True
    ) -> ua.MonitoredItemCreateRequest:
        params = ua.MonitoringParameters()
        params.ClientHandle = signal.handle
        params.SamplingInterval = signal.binding.sampling_interval / timedelta(milliseconds=1)
        params.QueueSize = self.queue_size(signal)
        params.DiscardOldest = True
        if with_filter:
            params.Filter = data_change_filter(signal.binding.deadband)
        item = ua.ReadValueId()
        item.NodeId = signal.node_id(namespace_index)
        item.AttributeId = ua.AttributeIds.Value
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = item
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = params
        return request


def data_change_filter(deadband: Deadband | None) -> ua.DataChangeFilter:
    """The item's DataChangeFilter.

    Without a deadband every new sample is reported, even when the value repeats
    (trigger StatusValueTimestamp): a counter that stands still still shows as live. With a
    deadband the trigger is StatusValue and the server reports a change only when it
    exceeds the deadband (absolute, in the signal's unit; percent, of the node's EURange).
    """
    flt = ua.DataChangeFilter()
    if deadband is None:
        flt.Trigger = ua.DataChangeTrigger.StatusValueTimestamp
        flt.DeadbandType = ua.DeadbandType.None_.value
        flt.DeadbandValue = 0.0
        return flt
    flt.Trigger = ua.DataChangeTrigger.StatusValue
    flt.DeadbandType = (
        ua.DeadbandType.Absolute.value
        if deadband.type is DeadbandType.ABSOLUTE
        else ua.DeadbandType.Percent.value
    )
    flt.DeadbandValue = float(deadband.value)
    return flt


def plan_subscriptions(assets: Sequence[Asset]) -> list[SubscriptionPlan]:
    """Subscriptions for the assets' signals, one per distinct publishing interval."""
    groups: dict[timedelta, list[MonitoredSignal]] = {}
    handle = 0
    for asset in assets:
        if not isinstance(asset.binding, OpcUaAssetBinding):
            raise ConfigError(f"asset {asset.id} is not fed by an OPC UA source")
        interval = asset.binding.publishing_interval
        for name, signal in asset.signals.items():
            if not isinstance(signal.binding, OpcUaSignalBinding):
                raise ConfigError(f"signal {asset.id}.{name} is not bound to OPC UA")
            handle += 1
            groups.setdefault(interval, []).append(
                MonitoredSignal(handle, asset.id, name, signal.binding)
            )
    return [SubscriptionPlan(i, tuple(s)) for i, s in sorted(groups.items())]


def check_node_ids(plans: Sequence[SubscriptionPlan]) -> list[str]:
    """Problems with node id templates that cannot become node ids, one line each."""
    problems = []
    for plan in plans:
        for signal in plan.signals:
            try:
                signal.node_id(0)
            except (ValueError, ua.UaError) as exc:
                problems.append(
                    f"{signal.asset_id}.{signal.signal}: node id "
                    f"{signal.binding.node_id_pattern!r} is not valid ({exc})"
                )
    return problems


@dataclass(frozen=True)
class SecuritySettings:
    """Resolved client security: None/None, or a policy, mode and the client's key pair."""

    mode: SecurityMode
    policy: SecurityPolicy
    certificate: Path | None
    private_key: Path | None
    server_certificate: Path | None

    @property
    def enabled(self) -> bool:
        return self.mode is not SecurityMode.NONE

    @property
    def policy_class(self) -> type[security_policies.SecurityPolicy]:
        return _POLICIES[self.policy]

    @property
    def message_mode(self) -> ua.MessageSecurityMode:
        return _MODES[self.mode]

    def describe(self) -> str:
        return f"{self.policy}/{self.mode}"


_OVERRIDE_KEYS = {"mode", "policy", "certificate", "private_key", "server_certificate"}


def security_settings(
    configured: OpcUaSecurity, override: Mapping[str, Any] | None = None
) -> SecuritySettings:
    """The source's security settings, with the keys of `override` replacing them.

    Override keys: mode, policy, certificate, private_key, server_certificate. Relative
    paths in an override are taken as given (relative to the working directory).
    """
    settings = configured
    if override:
        unknown = sorted(set(override) - _OVERRIDE_KEYS)
        if unknown:
            raise ConfigError(
                f"unknown OPC UA security setting(s): {', '.join(unknown)} "
                f"(expected {', '.join(sorted(_OVERRIDE_KEYS))})"
            )
        try:
            settings = OpcUaSecurity.model_validate({**configured.model_dump(), **override})
        except ValidationError as exc:
            problems = [f"security: {e['msg']}" for e in exc.errors()]
            raise ConfigError("invalid OPC UA security settings", problems) from None
    return SecuritySettings(
        mode=settings.mode,
        policy=settings.policy,
        certificate=settings.certificate,
        private_key=settings.private_key,
        server_certificate=settings.server_certificate,
    )
