# Shared head of every Overvisor Hyper-V script. The driver puts one line
# before it: $OvParamsB64 = '<base64 of the UTF-8 JSON parameters>', so no
# parameter is ever part of the script text.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$script:OvOp = ''

# A failure the driver maps to a typed error (not_found, invalid_state, ...).
function Fail([string]$code, [string]$message) {
    $e = New-Object System.Exception $message
    $e.Data['ovcode'] = $code
    throw $e
}

function Write-OvLine($value) {
    [Console]::Out.WriteLine((ConvertTo-Json -InputObject $value -Depth 8 -Compress))
}

function Get-OvTime([datetime]$t) { $t.ToUniversalTime().ToString('o') }

# Names are matched exactly (Hyper-V\Get-VM -Name takes wildcards, and Hyper-V
# allows two VMs with one name); a GUID addresses the VM by its Id.
function Get-OvVm([string]$ref) {
    $guid = [guid]::Empty
    if ([guid]::TryParse($ref, [ref]$guid)) {
        $vms = @(Hyper-V\Get-VM -Id $guid -ErrorAction SilentlyContinue)
    } else {
        $vms = @(Hyper-V\Get-VM | Where-Object { $_.Name -eq $ref })
    }
    if ($vms.Count -eq 0) { Fail 'not_found' "VM $ref not found" }
    if ($vms.Count -gt 1) { Fail 'ambiguous' "$($vms.Count) VMs are named $ref; use the VM's Id" }
    $vms[0]
}

function ConvertTo-OvVm($vm) {
    [ordered]@{
        id = $vm.Id.ToString(); name = $vm.Name; state = $vm.State.ToString()
        cpus = [int]$vm.ProcessorCount; memory_bytes = [int64]$vm.MemoryStartup
    }
}

function Invoke-OvMain([string]$op, [scriptblock]$body) {
    $script:OvOp = $op
    try {
        $json = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($OvParamsB64))
        $p = ConvertFrom-Json -InputObject $json
        $data = & $body $p
        Write-OvLine ([ordered]@{ ok = $true; op = $op; data = $data; error = $null })
    } catch {
        $code = $_.Exception.Data['ovcode']
        if (-not $code) { $code = 'host_error' }
        Write-OvLine ([ordered]@{ ok = $false; op = $op; data = $null
            error = [ordered]@{ code = $code; fqid = [string]$_.FullyQualifiedErrorId; message = $_.Exception.Message } })
        exit 1
    }
}
