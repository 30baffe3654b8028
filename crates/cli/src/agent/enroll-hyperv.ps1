# Overvisor: enrol this Hyper-V host (printed by `overvisor agent enroll --kind hyperv`).
# Run it in an elevated Windows PowerShell 5.1 (or PowerShell 7) on the host, with an API
# key of the account that will own the host in $env:OVERVISOR_API_KEY. It registers the
# host with the control plane and authorizes the account's SSH key for the automation
# user; run it again at any time (it changes nothing that is already right).
$ErrorActionPreference = 'Stop'
$Url = {{URL}}
$User = {{USER}}
$Port = {{PORT}}
$Address = {{ADDRESS}}

if (-not $env:OVERVISOR_API_KEY) {
    throw 'Set $env:OVERVISOR_API_KEY to an API key of the account that will own this host.'
}
if (-not (Get-Module -ListAvailable -Name Hyper-V)) {
    throw 'The Hyper-V PowerShell module is missing: Install-WindowsFeature Hyper-V-PowerShell'
}
if (-not (Get-Service -Name sshd -ErrorAction SilentlyContinue)) {
    throw 'OpenSSH Server is missing: Add-WindowsCapability -Online -Name OpenSSH.Server~~~~0.0.1.0, then Start-Service sshd'
}
# Overvisor's scripts are longer than cmd.exe (OpenSSH's default shell) takes.
$shell = (Get-ItemProperty -Path 'HKLM:\SOFTWARE\OpenSSH' -Name DefaultShell -ErrorAction SilentlyContinue).DefaultShell
if ($shell -notmatch 'powershell\.exe$') {
    Write-Warning ("OpenSSH's default shell is not Windows PowerShell, and most of Overvisor's commands are longer than cmd.exe accepts. " +
        "Set it: New-ItemProperty -Path 'HKLM:\SOFTWARE\OpenSSH' -Name DefaultShell -Value " +
        "'C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe' -PropertyType String -Force")
}
$account = Get-LocalUser -Name $User -ErrorAction SilentlyContinue
if (-not $account) {
    throw "The automation user $User does not exist: create it (New-LocalUser) and add it to 'Hyper-V Administrators'."
}

# The host key the control plane pins: OpenSSH's SHA256 fingerprint.
$hostKey = Join-Path $env:ProgramData 'ssh\ssh_host_ed25519_key.pub'
$blob = [Convert]::FromBase64String((Get-Content -Path $hostKey -Raw).Trim().Split(' ')[1])
$digest = [Security.Cryptography.SHA256]::Create().ComputeHash($blob)
$fingerprint = 'SHA256:' + [Convert]::ToBase64String($digest).TrimEnd('=')

$body = @{
    kind = 'hyperv'
    hostname = [Net.Dns]::GetHostEntry([string]'').HostName
    port = $Port
    user = $User
    host_key_fingerprint = $fingerprint
}
if ($Address) { $body.ip_address = $Address }
[Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
$answer = Invoke-RestMethod -Method Post -Uri "$Url/v1/servers/connect" -ContentType 'application/json' `
    -Headers @{ Authorization = "Bearer $env:OVERVISOR_API_KEY" } -Body ($body | ConvertTo-Json -Compress)

# authorized_keys options such as command= would mean something: one plain key line only.
$line = "$($answer.authorized_keys)".Trim()
if ($line -cnotmatch '^(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+) [A-Za-z0-9+/]+=*( [ -~]*)?$') {
    throw 'The control plane sent something that is not a public key line.'
}

# OpenSSH on Windows reads the keys of administrators from one file (sshd_config's
# "Match Group administrators"), the keys of other users from their profile.
$isAdmin = @(Get-LocalGroupMember -SID 'S-1-5-32-544' | Where-Object { $_.SID -eq $account.SID }).Count -gt 0
if ($isAdmin) {
    $file = Join-Path $env:ProgramData 'ssh\administrators_authorized_keys'
} else {
    $profileDir = (Get-CimInstance -ClassName Win32_UserProfile | Where-Object { $_.SID -eq $account.SID.Value }).LocalPath
    if (-not $profileDir) { throw "$User has no profile yet: sign in as $User once, then run this again." }
    $file = Join-Path $profileDir '.ssh\authorized_keys'
    New-Item -ItemType Directory -Force -Path (Split-Path $file) | Out-Null
}
$keyOf = { param($l) ($l.Trim() -split ' ')[0..1] -join ' ' }
$present = (Test-Path $file) -and @(Get-Content -Path $file | Where-Object { (& $keyOf $_) -ceq (& $keyOf $line) }).Count -gt 0
if (-not $present) { Add-Content -Path $file -Value $line -Encoding ascii }
# sshd ignores a key file others may write: SYSTEM, Administrators (and the user, for its own).
if ($isAdmin) {
    icacls.exe $file /inheritance:r /grant 'SYSTEM:F' /grant '*S-1-5-32-544:F' | Out-Null
} else {
    icacls.exe $file /inheritance:r /grant 'SYSTEM:F' /grant '*S-1-5-32-544:F' /grant "${User}:F" | Out-Null
}
if ($LASTEXITCODE -ne 0) { throw "icacls could not restrict $file" }

'{0} Hyper-V host {1} ({2}); key for {3} in {4}' -f $(if ($answer.created) { 'registered' } else { 'updated' }), $answer.host.name, $answer.host.id, $User, $file
