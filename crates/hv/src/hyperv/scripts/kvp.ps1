# overvisor-op: vm.kvp v1
# Host->guest items through Msvm_VirtualSystemManagementService (WMI v1
# cmdlets: the embedded-instance text they make is what the methods take),
# guest->host items read from Msvm_KvpExchangeComponent.
Invoke-OvMain 'vm.kvp' {
    param($p)
    $vm = Get-OvVm $p.vm
    $ns = 'root\virtualization\v2'
    $cs = Microsoft.PowerShell.Management\Get-WmiObject -Namespace $ns -Class Msvm_ComputerSystem -Filter "Name='$($vm.Id.ToString())'"
    $svc = Microsoft.PowerShell.Management\Get-WmiObject -Namespace $ns -Class Msvm_VirtualSystemManagementService
    function Wait-OvJob($r, $what) {
        if ($r.ReturnValue -eq 4096) {
            $job = [wmi]$r.Job
            while (@(3, 4) -contains $job.JobState) { Start-Sleep -Milliseconds 100; $job = [wmi]$r.Job }
            if ($job.JobState -ne 7) { Fail 'host_error' "${what}: $($job.ErrorDescription)" }
        } elseif ($r.ReturnValue -ne 0) { Fail 'host_error' "$what returned $($r.ReturnValue)" }
    }
    function ConvertTo-OvItems($xmls) {
        , @($xmls | Where-Object { $_ } | ForEach-Object {
            $x = [xml]$_
            $n = ($x.INSTANCE.PROPERTY | Where-Object { $_.NAME -eq 'Name' }).VALUE
            $v = ($x.INSTANCE.PROPERTY | Where-Object { $_.NAME -eq 'Data' }).VALUE
            [ordered]@{ name = $n; value = $v } })
    }
    function New-OvItem([string]$name, [string]$value) {
        $i = ([wmiclass]"$($ns):Msvm_KvpExchangeDataItem").CreateInstance()
        $i.Name = $name; $i.Data = $value; $i.Source = 0
        $i.GetText([Management.TextFormat]::CimDtd20)
    }
    switch ($p.kvp) {
        'set' {
            $items = @($p.items | ForEach-Object { New-OvItem $_.name $_.value })
            if ($items.Count -gt 128) { Fail 'bad_params' 'at most 128 items a call' }
            Wait-OvJob ($svc.AddKvpItems($cs, $items)) 'AddKvpItems'
        }
        'remove' {
            $items = @($p.names | ForEach-Object { New-OvItem $_ '' })
            if ($items.Count -gt 128) { Fail 'bad_params' 'at most 128 items a call' }
            Wait-OvJob ($svc.RemoveKvpItems($cs, $items)) 'RemoveKvpItems'
        }
        'get_host' {
            $sd = $cs.GetRelated('Msvm_VirtualSystemSettingData') | Select-Object -First 1
            $kvp = $sd.GetRelated('Msvm_KvpExchangeComponentSettingData') | Select-Object -First 1
            ConvertTo-OvItems $kvp.HostExchangeItems
        }
        'get_guest' {
            $kvp = $cs.GetRelated('Msvm_KvpExchangeComponent') | Select-Object -First 1
            if (-not $kvp) { , @() } else { ConvertTo-OvItems $kvp.GuestExchangeItems }
        }
        default { Fail 'bad_params' "unknown kvp operation $($p.kvp)" }
    }
}
